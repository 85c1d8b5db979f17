// Package store reads and writes the files of a tree: a local directory, or the objects under an
// S3 prefix (s3://bucket/prefix) on AWS or any S3-compatible store. Batch conversion walks a
// source tree and writes a destination tree through this one small interface, whatever each is.
//
// A store never exposes a partial file at a name: Put makes the whole content appear at once
// (a renamed temporary file locally, a completed upload on S3), or nothing.
package store

import (
	"context"
	"io"
	"time"
)

// Object is one regular file of a tree.
type Object struct {
	// Path is slash-separated and relative to the tree's root, never empty, never with "." or
	// ".." elements.
	Path string
	// Size is the length in bytes.
	Size int64
	// ModTime is the last modification time (LastModified on S3).
	ModTime time.Time
	// ETag is the object's entity tag on S3, empty for a local file.
	ETag string
}

// Tree is a local directory or an S3 prefix. Paths are slash-separated, relative to the root.
type Tree interface {
	// Walk calls fn for each regular file under the root, in lexical order of Path. An entry
	// that is not followed (locally: a symlink whose target leaves the root, a symlink loop,
	// a device or socket) is passed with a non-nil *SkipError, and one it could not read (a
	// directory below the root it may not list) with a *ReadError, the Object's Path set; fn
	// decides what to record. Walk stops at fn's first error and returns it.
	Walk(ctx context.Context, fn func(Object, error) error) error
	// Stat describes the file at path; an error matching fs.ErrNotExist when there is none.
	Stat(ctx context.Context, path string) (Object, error)
	// Open opens the file at path for reading.
	Open(ctx context.Context, path string) (io.ReadCloser, error)
	// LocalPath returns the local file name of path when the tree is a local directory, so that
	// a converter can read or write it in place; ok is false for a remote tree.
	LocalPath(path string) (name string, ok bool)
	// Put stores size bytes read from r at path. The content appears whole or not at all, and
	// the store checks that it holds exactly the bytes read (the SHA-256 sha256hex, lower-case
	// hex, when not empty). Put creates the parent directories a local tree needs.
	Put(ctx context.Context, path string, r io.Reader, size int64, sha256hex string) error
	// Remove deletes the file at path; a file that is already gone is not an error.
	Remove(ctx context.Context, path string) error
	// String is the tree's location as the user wrote it: a directory or s3://bucket/prefix.
	String() string
}

// SkipError says why Walk did not follow an entry.
type SkipError struct {
	Path   string // relative to the root
	Reason string // for example "symlink leaves the tree", "symlink loop"
}

func (e *SkipError) Error() string { return e.Path + ": " + e.Reason }

// ReadError says that Walk could not read an entry below the root, a directory it could not
// list or an entry it could not stat; the walk goes on without it.
type ReadError struct {
	Path string // relative to the root
	Err  error  // naming no local path
}

func (e *ReadError) Error() string { return e.Path + ": " + e.Err.Error() }

func (e *ReadError) Unwrap() error { return e.Err }
