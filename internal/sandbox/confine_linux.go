//go:build linux

package sandbox

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"golang.org/x/sys/unix"

	"github.com/ptsafe/converter/internal/fault"
)

// setRlimits applies the child's resource limits to itself. RLIMIT_NPROC is deliberately not
// used: it counts every process of the user, not this one; process creation is denied by the
// seccomp filter instead. It reports whether this platform has resource limits.
func setRlimits(l rlimits) (bool, error) {
	set := []struct {
		name     string
		res      int
		cur, max uint64
	}{
		{"RLIMIT_CORE", unix.RLIMIT_CORE, 0, 0},
		{"RLIMIT_NOFILE", unix.RLIMIT_NOFILE, l.OpenFiles, l.OpenFiles},
		{"RLIMIT_FSIZE", unix.RLIMIT_FSIZE, l.FileSize, l.FileSize},
		// SIGXCPU at the soft limit is ignored by the Go runtime; the kernel's SIGKILL at the hard
		// limit one second later is what ends the child.
		{"RLIMIT_CPU", unix.RLIMIT_CPU, l.CPUSeconds, l.CPUSeconds + 1},
		{"RLIMIT_AS", unix.RLIMIT_AS, l.AddressSpace, l.AddressSpace},
	}
	for _, s := range set {
		if s.cur == 0 && s.res != unix.RLIMIT_CORE {
			continue // not configured
		}
		if err := unix.Setrlimit(s.res, &unix.Rlimit{Cur: s.cur, Max: s.max}); err != nil {
			return true, fmt.Errorf("%s=%d: %w", s.name, s.cur, err)
		}
	}
	return true, nil
}

// filter is the syscall denylist: process creation, tracing and network, plus the interfaces
// that would let a process get around a syscall filter (io_uring performs connect and socket
// without the syscalls) or widen its reach (namespaces, mounts, bpf). Everything else is
// allowed, so the Go runtime keeps working whatever it needs.
func filter() seccomp.Filter {
	eperm := seccomp.ActionErrno // the library adds EPERM to a bare errno action
	return seccomp.Filter{
		NoNewPrivs: true,
		Flag:       seccomp.FilterFlagTSync,
		Policy: seccomp.Policy{
			DefaultAction: seccomp.ActionAllow,
			Syscalls: []seccomp.SyscallGroup{
				{
					// ENOSYS, not EPERM: glibc's pthread_create (cgo builds) falls back to clone only
					// on ENOSYS, and clone is filtered on its flags below.
					Action: seccomp.ActionErrno | seccomp.Action(unix.ENOSYS),
					Names:  []string{"clone3"},
				},
				{
					// clone is allowed only for threads: a new process is a clone without
					// CLONE_THREAD. On amd64 and arm64 the flags are the first argument.
					Action: eperm,
					NamesWithCondtions: []seccomp.NameWithConditions{{
						Name: "clone",
						Conditions: seccomp.ArgumentConditions{
							{Argument: 0, Operation: seccomp.BitsNotSet, Value: unix.CLONE_THREAD},
						},
					}},
				},
				{
					Action: eperm,
					Names: existing([]string{
						"fork", "vfork", "execve", "execveat",
						"ptrace", "process_vm_readv", "process_vm_writev",
						"socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
						"sendto", "sendmsg", "sendmmsg", "recvfrom", "recvmsg", "recvmmsg",
						"io_uring_setup", "io_uring_enter", "io_uring_register",
						"unshare", "setns", "mount", "umount2", "pivot_root", "chroot",
						"bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
					}),
				},
			},
		},
	}
}

// existing drops syscall names the running architecture does not have (fork and vfork do not
// exist on arm64), so one list serves every architecture the library knows.
func existing(names []string) []string {
	out := names[:0:0]
	for _, n := range names {
		p := seccomp.Policy{DefaultAction: seccomp.ActionAllow, Syscalls: []seccomp.SyscallGroup{{Action: seccomp.ActionErrno, Names: []string{n}}}}
		if _, err := p.Assemble(); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// installSeccomp loads the filter on every thread of the process (TSYNC; threads created later
// inherit it) and checks /proc that each thread is in filter mode. When the kernel has no
// seccomp it returns a status saying so and no error: the child runs with rlimits only. Any
// other failure is an error, and the child refuses to run.
func installSeccomp() (Status, error) {
	var st Status
	if !seccomp.Supported() {
		st.Seccomp = "unsupported: the kernel has no seccomp"
		return st, nil
	}
	if err := seccomp.LoadFilter(filter()); err != nil {
		if errors.Is(err, syscall.ENOSYS) {
			st.Seccomp = "unsupported: " + err.Error()
			return st, nil
		}
		return st, err
	}
	st.Seccomp = "filter"
	n, unfiltered, err := threadModes()
	st.Threads = n
	switch {
	case err != nil:
		// No /proc to check: TSYNC's own success is all we know.
		st.TSync = true
		st.Seccomp = "filter (threads unverified: " + err.Error() + ")"
	case len(unfiltered) > 0:
		return st, fmt.Errorf("seccomp filter missing on threads %v", unfiltered)
	default:
		st.TSync = true
	}
	return st, nil
}

// threadModes reads the Seccomp field of every thread's status and returns the thread count
// and the threads not in filter mode (2).
func threadModes() (int, []string, error) {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return 0, nil, err
	}
	var bad []string
	for _, t := range tasks {
		b, err := os.ReadFile(filepath.Join("/proc/self/task", t.Name(), "status"))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // the thread exited
			}
			return 0, nil, err
		}
		mode := ""
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "Seccomp:"); ok {
				mode = strings.TrimSpace(v)
				break
			}
		}
		if mode != "2" {
			bad = append(bad, t.Name()+"="+mode)
		}
	}
	return len(tasks), bad, nil
}

// closeInherited closes the descriptors from keep up that came with the exec (those below keep
// are stdin, stdout, stderr and the files the parent passed on purpose). Go opens every
// descriptor close-on-exec, but a parent that created one with a raw syscall would leak it. In a
// freshly exec'd process a descriptor without FD_CLOEXEC can only have been inherited; the
// runtime's own (epoll, eventfd, the cgroup CPU files it keeps open) all have the flag.
func closeInherited(keep int) (int, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, err
	}
	closed := 0
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < keep {
			continue
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC != 0 {
			continue // gone (ReadDir's own descriptor) or the runtime's
		}
		if unix.Close(fd) == nil {
			closed++
		}
	}
	return closed, nil
}

// configure gives the child its own process group, so that killing the group reaches anything
// it might have started, and a parent-death signal, so that it dies with the parent.
func configure(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error {
		if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
			return cmd.Process.Kill()
		}
		return nil
	}
}

// signalFault classifies a child ended by a signal: the CPU limit's SIGXCPU or SIGKILL, the
// output size limit's SIGXFSZ, or a crash. It returns nil when no signal ended the child.
func signalFault(ps *os.ProcessState, lim rlimits, stderrLine string) error {
	ws, ok := ps.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() {
		return nil
	}
	sig := ws.Signal()
	cpu := ps.UserTime() + ps.SystemTime()
	cpuLimit := time.Duration(lim.CPUSeconds) * time.Second
	switch {
	case sig == syscall.SIGXCPU || sig == syscall.SIGKILL && lim.CPUSeconds > 0 && cpu >= cpuLimit:
		return fault.New(fault.Limit, "", "CPU time limit (RLIMIT_CPU %ds) exceeded: sandbox child killed by %s after %s of CPU time",
			lim.CPUSeconds, unix.SignalName(sig), cpu.Round(time.Millisecond))
	case sig == syscall.SIGXFSZ:
		return fault.New(fault.Limit, "", "output file size limit (RLIMIT_FSIZE %d bytes) exceeded: sandbox child killed by SIGXFSZ", lim.FileSize)
	case sig == syscall.SIGKILL:
		return fault.New(fault.Internal, "", "sandbox child killed by SIGKILL (the kernel's OOM killer or an operator)")
	}
	msg := fmt.Sprintf("sandbox child crashed: killed by signal %s", unix.SignalName(sig))
	if stderrLine != "" {
		msg += ": " + stderrLine
	}
	return fault.New(fault.Internal, "", "%s", msg)
}
