package main

import (
	"context"
	"errors"
	"io"
)

// runServe starts the HTTP job service (issue 4). Placeholder until the service lands.
func runServe(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return errors.New("serve: not implemented")
}
