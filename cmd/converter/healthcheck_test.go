package main

import (
	"bufio"
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// imageUID is the distroless image's nonroot user, which the image runs the service as.
const imageUID = 65532

// TestImageHealthcheck does what deploy/Dockerfile does where no Docker engine runs: it builds
// the binary with the image's flags (static, version and revision linked in), starts `serve` as
// an unprivileged user on an empty data directory that user owns (a fresh named volume), and
// runs `converter healthcheck` as the HEALTHCHECK would, through CONVERTER_ADDR.
func TestImageHealthcheck(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir, err := os.MkdirTemp("", "converter-image-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil { // the unprivileged user must reach the binary
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "converter")
	const pkg = "github.com/ptsafe/converter/internal/buildinfo"
	build := exec.Command("go", "build", "-trimpath", "-ldflags",
		"-s -w -X "+pkg+".linkedVersion=v9.9.9-image -X "+pkg+".linkedRevision=0123abcd", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "version").Output(); err != nil || string(out) != "converter v9.9.9-image (0123abcd)\n" {
		t.Errorf("version = %q, %v; want the version and revision linked in", out, err)
	}

	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		cred = &syscall.Credential{Uid: imageUID, Gid: imageUID}
		if err := os.Chown(data, imageUID, imageUID); err != nil {
			t.Skipf("cannot give the data directory to uid %d: %v", imageUID, err)
		}
	}

	// Before a server listens, the check fails.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	addr := "0.0.0.0:" + strconv.Itoa(port)
	if out, err := healthcheck(bin, addr); err == nil {
		t.Fatalf("healthcheck with no server succeeded: %s", out)
	}

	srv := exec.Command(bin, "serve", "--addr", "127.0.0.1:"+strconv.Itoa(port), "--data", data)
	srv.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	var stderr bytes.Buffer
	srv.Stderr = &stderr
	stdout, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	// The server prints its address once it listens and its queue has started.
	if _, err := bufio.NewReader(stdout).ReadString('\n'); err != nil {
		srv.Wait()
		t.Fatalf("server did not start: %v\n%s", err, stderr.String())
	}
	if out, err := healthcheck(bin, addr); err != nil || strings.TrimSpace(string(out)) != "ready" {
		t.Fatalf("healthcheck = %q, %v; want ready\nserver: %s", out, err, stderr.String())
	}
	st, err := os.Stat(filepath.Join(data, "jobs.db"))
	if err != nil {
		t.Fatalf("the server made no job database in its data directory: %v", err)
	}
	if cred != nil && st.Sys().(*syscall.Stat_t).Uid != imageUID {
		t.Errorf("jobs.db belongs to uid %d, want %d", st.Sys().(*syscall.Stat_t).Uid, imageUID)
	}
}

// healthcheck runs `converter healthcheck` with CONVERTER_ADDR set to addr, as the image does.
func healthcheck(bin, addr string) ([]byte, error) {
	cmd := exec.Command(bin, "healthcheck", "--timeout", "30s")
	cmd.Env = []string{"CONVERTER_ADDR=" + addr}
	return cmd.CombinedOutput()
}

// The address serve listens on is the one healthcheck asks: an unspecified host on loopback.
func TestHealthcheckDialAddr(t *testing.T) {
	cases := []struct{ addr, want string }{
		{"0.0.0.0:8080", "127.0.0.1:8080"},
		{"[::]:8080", "[::1]:8080"},
		{":8080", "127.0.0.1:8080"},
		{"127.0.0.1:9", "127.0.0.1:9"},
		{"converter.internal:8080", "converter.internal:8080"},
	}
	for _, c := range cases {
		if got, err := dialAddr(c.addr); err != nil || got != c.want {
			t.Errorf("dialAddr(%q) = %q, %v; want %q", c.addr, got, err, c.want)
		}
	}
	for _, bad := range []string{"8080", "host:"} {
		if got, err := dialAddr(bad); err == nil {
			t.Errorf("dialAddr(%q) = %q, want an error", bad, got)
		}
	}
}
