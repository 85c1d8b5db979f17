//go:build unix

package jobs

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"
	"testing"
)

// Every way of running out of room becomes ErrInsufficientStorage, which the API answers 507;
// other failures stay what they are.
func TestNoSpace(t *testing.T) {
	cases := []struct {
		err  error
		want bool
	}{
		{&fs.PathError{Op: "write", Path: "upload-1", Err: syscall.ENOSPC}, true},
		{fmt.Errorf("store upload: %w", &fs.PathError{Op: "rename", Err: syscall.EDQUOT}), true},
		{errors.New("insert job x: database or disk is full (13)"), true},
		{&fs.PathError{Op: "write", Err: syscall.EIO}, false},
		{errors.New("client went away"), false},
	}
	for _, c := range cases {
		if got := errors.Is(noSpace(c.err), ErrInsufficientStorage); got != c.want {
			t.Errorf("noSpace(%v) is ErrInsufficientStorage: %v, want %v", c.err, got, c.want)
		}
	}
}
