// Package ctxio makes long copies stop when their context ends: io.Copy has no context, and a
// copy of a multi-gigabyte file must not outlive the request or run that asked for it.
package ctxio

import (
	"context"
	"io"
)

// Reader returns a reader that reads r until ctx ends, then fails every read with ctx's error.
func Reader(ctx context.Context, r io.Reader) io.Reader { return reader{ctx, r} }

type reader struct {
	ctx context.Context
	r   io.Reader
}

func (c reader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
