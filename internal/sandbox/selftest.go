//go:build sandboxtest

package sandbox

import (
	"errors"
	"io"
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
func selftest(req *request, files []*os.File) (map[string]string, bool) {
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
		// Run as a conversion: write part of the output and a scratch file, then die mid-write.
		files[1].Write(make([]byte, 1024))
		if f, err := os.CreateTemp(req.Options.ScratchDir, ".inflate-*"); err == nil {
			f.Write(make([]byte, 1024))
		}
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		time.Sleep(time.Minute)
		return nil, true
	case "selftest-flood":
		// Say far more than the parent reads, bypassing the bounded encoder.
		chunk := make([]byte, 1<<20)
		for {
			if _, err := os.Stdout.Write(chunk); err != nil {
				return nil, true
			}
		}
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
		// Run as a conversion: what Landlock lets the child do. It reads and writes through the
		// descriptors it was given, creates and removes files in its scratch directory, and
		// opens no other path: not its own source or output by name, nothing beside them (the
		// test puts a file named "secret" beside the source), nothing in the output's directory
		// or below it, nothing in /tmp.
		src, out, scratch := files[0], files[1], req.Options.ScratchDir
		// The output is named by its base name; the scratch directory is made beside it.
		outDir := filepath.Dir(scratch)
		probe := map[string]string{}
		_, err := io.ReadAll(src)
		probe["read source descriptor"] = errString(err)
		_, err = out.Write([]byte("x"))
		probe["write output descriptor"] = errString(err)
		_, err = os.ReadFile(src.Name())
		probe["read source path"] = errString(err)
		probe["write source path"] = errString(os.WriteFile(src.Name(), []byte("x"), 0o600))
		_, err = os.ReadFile(filepath.Join(filepath.Dir(src.Name()), "secret"))
		probe["read beside source"] = errString(err)
		_, err = os.ReadDir(filepath.Dir(src.Name()))
		probe["list source directory"] = errString(err)
		probe["write beside source"] = errString(os.WriteFile(filepath.Join(filepath.Dir(src.Name()), "planted"), []byte("x"), 0o600))
		outPath := filepath.Join(outDir, out.Name())
		_, err = os.ReadFile(outPath)
		probe["read output path"] = errString(err)
		probe["write output path"] = errString(os.WriteFile(outPath, []byte("x"), 0o600))
		probe["write in output directory"] = errString(os.WriteFile(filepath.Join(outDir, "planted"), []byte("x"), 0o600))
		probe["append below output directory"] = errString(appendTo(filepath.Join(outDir, ".ssh", "authorized_keys")))
		probe["write in /tmp"] = errString(os.WriteFile(filepath.Join("/tmp", "converter-planted"), []byte("x"), 0o600))
		_, err = os.ReadFile("/etc/passwd")
		probe["read /etc/passwd"] = errString(err)
		f, err := os.CreateTemp(scratch, ".inflate-*")
		probe["create in scratch"] = errString(err)
		if err == nil {
			_, err = f.Write([]byte("x"))
			f.Close()
			probe["write in scratch"] = errString(err)
			probe["truncate in scratch"] = errString(os.Truncate(f.Name(), 0))
			probe["remove in scratch"] = errString(os.Remove(f.Name()))
		}
		_, err = os.ReadDir(scratch)
		probe["list scratch"] = errString(err)
		probe["mkdir in scratch"] = errString(os.Mkdir(filepath.Join(scratch, "d"), 0o700))
		probe["symlink in scratch"] = errString(os.Symlink("/etc/passwd", filepath.Join(scratch, "l")))
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

// appendTo appends to an existing file, as a child would to plant a key.
func appendTo(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteString("x")
	return err
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
