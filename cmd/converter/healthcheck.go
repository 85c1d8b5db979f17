package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/ptsafe/converter/internal/envflag"
)

const healthcheckAbout = `Asks the server at --addr whether it is ready (GET /readyz) and exits 0 when it is, 1 when
it is not or does not answer: the image's HEALTHCHECK, where there is no shell or curl. An
unspecified listen address (0.0.0.0, [::]) is asked on loopback, so the address serve listens
on, CONVERTER_ADDR, serves both.`

// runHealthcheck reports whether the server at --addr answers ready.
func runHealthcheck(ctx context.Context, args []string, getenv func(string) string, stdout, _ io.Writer) error {
	c := newCommand("healthcheck", "", healthcheckAbout)
	addr := c.fs.String("addr", defaultAddr, "the server's `HOST:PORT`")
	timeout := c.fs.Duration("timeout", 5*time.Second, "how long to wait for the answer")
	if err := envflag.Bind(c.fs, getenv, "addr"); err != nil {
		return c.usagef("%v", err)
	}
	if _, err := c.parse(args, 0, 0, stdout); err != nil {
		return err
	}
	target, err := dialAddr(*addr)
	if err != nil {
		return c.usagef("--addr: %v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+target+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("not ready: %w", err)
	}
	defer resp.Body.Close()
	var body struct{ Status, Detail string }
	_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("not ready: %s %s", resp.Status, body.Detail)
	}
	fmt.Fprintln(stdout, "ready")
	return nil
}

// dialAddr is the address to ask for a listen address: an unspecified host is asked on
// loopback.
func dialAddr(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	if port == "" {
		return "", errors.New("no port")
	}
	return net.JoinHostPort(host, port), nil
}
