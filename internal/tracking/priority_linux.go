package tracking

import "syscall"

// writerNice is the nice value of the event writer's thread: lower priority than the request
// handlers' threads (0), so they win the CPU when both want it.
const writerNice = 10

// lowerThreadPriority lowers the calling OS thread's scheduling priority. On Linux a nice
// value set for a thread id applies to that thread alone. Failing is harmless: the writer
// then competes with the handlers as an equal.
func lowerThreadPriority() {
	_ = syscall.Setpriority(syscall.PRIO_PROCESS, syscall.Gettid(), writerNice)
}
