//go:build !race

package sending

const raceEnabled = false
