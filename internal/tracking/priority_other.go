//go:build !linux

package tracking

// lowerThreadPriority does nothing where threads cannot be given their own priority.
func lowerThreadPriority() {}
