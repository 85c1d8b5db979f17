//go:build sandboxtest

package sandbox

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// selftest runs the test-only operations, inside the confined child, so that tests can show
// each limit and each denied syscall doing its job. They are compiled only with -tags
// sandboxtest.
func selftest(req *request) (map[string]string, bool) {
	switch req.Op {
	case "selftest-alloc":
		// Keep every chunk reachable and touched until the address-space limit ends the process.
		var keep [][]byte
		for {
			b := make([]byte, 64<<20)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1
			}
			keep = append(keep, b)
			runtime.KeepAlive(keep)
		}
	case "selftest-spin":
		for {
			_ = strconv.Itoa(len(os.Args))
		}
	case "selftest-sleep":
		time.Sleep(time.Hour)
		return nil, true
	case "selftest-signal":
		n, _ := strconv.Atoi(req.Arg)
		syscall.Kill(os.Getpid(), syscall.Signal(n))
		time.Sleep(time.Minute)
		return nil, true
	case "selftest-partial":
		// Leave a temporary file where convert would, then die mid-write.
		f, err := os.CreateTemp(filepath.Dir(req.Dst), "."+filepath.Base(req.Dst)+".*.tmp")
		if err == nil {
			f.Write(make([]byte, 1024))
		}
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		time.Sleep(time.Minute)
		return nil, true
	case "selftest-fds":
		// Every open descriptor, found with fcntl (Landlock denies listing /proc/self/fd),
		// named by its /proc link (readlink is not a Landlock right).
		probe := map[string]string{}
		for fd := range 1024 {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
				continue
			}
			name := strconv.Itoa(fd)
			t, err := os.Readlink("/proc/self/fd/" + name)
			if err != nil {
				t = "?" + err.Error()
			}
			probe[name] = t
		}
		return probe, true
	case "selftest-files":
		// What Landlock lets the child do: read its source and work in its output's directory,
		// but read nothing else (req.Arg is a file beside the source) and write nowhere else.
		probe := map[string]string{}
		_, err := os.ReadFile(req.Src)
		probe["read source"] = errString(err)
		_, err = os.ReadFile(req.Arg)
		probe["read beside source"] = errString(err)
		_, err = os.ReadFile("/etc/passwd")
		probe["read /etc/passwd"] = errString(err)
		_, err = os.ReadDir(filepath.Dir(req.Src))
		probe["list source directory"] = errString(err)
		err = os.WriteFile(filepath.Join(filepath.Dir(req.Dst), "scratch"), []byte("x"), 0o600)
		probe["write in output directory"] = errString(err)
		err = os.WriteFile(filepath.Join(filepath.Dir(req.Src), "planted"), []byte("x"), 0o600)
		probe["write beside source"] = errString(err)
		err = os.WriteFile(req.Src, []byte("x"), 0o600)
		probe["overwrite source"] = errString(err)
		return probe, true
	case "selftest-escape":
		probe := map[string]string{}
		// execve itself, not os/exec, whose access check Landlock answers before the filter
		// sees a syscall. Were it allowed, the child would become true(1) and give no response.
		probe["exec"] = errString(syscall.Exec("/bin/true", []string{"true"}, nil))
		c, err := net.Dial("tcp", "127.0.0.1:1")
		if c != nil {
			c.Close()
		}
		probe["dial"] = errString(err)
		pid, _, e := syscall.RawSyscall(syscall.SYS_FORK, 0, 0, 0)
		if e == 0 && pid == 0 {
			syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 0, 0, 0) // the filter failed: end the copy
		}
		probe["fork"] = errnoString(e)
		_, _, e = syscall.RawSyscall(syscall.SYS_SOCKET, syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
		probe["socket"] = errnoString(e)
		probe["threads"] = newThreads(8)
		return probe, true
	}
	return nil, false
}

// newThreads makes the runtime start n more OS threads under the filter, showing that thread
// creation (clone with CLONE_THREAD) is still allowed.
func newThreads(n int) string {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
			<-start
		}()
	}
	time.Sleep(50 * time.Millisecond)
	close(start)
	wg.Wait()
	return "ok"
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errnoName(errno)
	}
	return err.Error()
}

func errnoString(e syscall.Errno) string {
	if e == 0 {
		return "ok"
	}
	return errnoName(e)
}

func errnoName(e syscall.Errno) string {
	switch e {
	case syscall.EPERM:
		return "EPERM"
	case syscall.EACCES:
		return "EACCES"
	case syscall.ENOSYS:
		return "ENOSYS"
	}
	return strings.ToUpper(e.Error())
}
