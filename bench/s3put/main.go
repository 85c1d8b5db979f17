// Command s3put uploads a local directory tree to an S3 prefix, for bench/batch.sh: the peer
// of batch's local-to-S3 case, measured two ways with the same SDK.
//
//	go run ./bench/s3put -mode tree|manager [-endpoint URL] [-part-size 16M] [-concurrency 4]
//	    [-workers 1] DIR s3://bucket/prefix
//
// -mode tree puts every file through internal/s3store (what batch does: checksummed parts, the
// expected SHA-256 checked before completing, the stored object checked after), -workers files
// at a time; -mode manager is the plain SDK way, the transfer manager's UploadDirectory with its
// defaults, on a client configured as its documentation shows. Credentials come from the SDK's
// standard chain. It prints one line on stdout: mode, files, bytes, seconds, MiB/s.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/sync/errgroup"

	"github.com/ptsafe/converter/internal/s3store"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "s3put:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	flags := flag.NewFlagSet("s3put", flag.ContinueOnError)
	flags.SetOutput(stderr)
	mode := flags.String("mode", "tree", "tree (internal/s3store) or manager (the SDK's transfer manager)")
	endpoint := flags.String("endpoint", "", "URL of an S3-compatible store (default: the SDK's settings)")
	partMiB := flags.Int64("part-size", s3store.DefaultPartSize>>20, "part size in MiB, for both modes")
	concurrency := flags.Int("concurrency", s3store.DefaultConcurrency, "parts in flight per file, for both modes")
	workers := flags.Int("workers", 1, "files uploaded at once (tree mode; the manager decides its own)")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if flags.NArg() != 2 {
		return fmt.Errorf("want DIR s3://bucket/prefix, got %d arguments", flags.NArg())
	}
	dir, location := flags.Arg(0), flags.Arg(1)
	files, total, err := listFiles(dir)
	if err != nil {
		return err
	}
	partSize := *partMiB << 20
	start := time.Now()
	switch *mode {
	case "tree":
		err = putTree(ctx, dir, files, location, s3store.Config{Endpoint: *endpoint, PartSize: partSize, Concurrency: *concurrency}, *workers)
	case "manager":
		err = putManager(ctx, dir, location, *endpoint, partSize, *concurrency)
	default:
		return fmt.Errorf("unknown -mode %q", *mode)
	}
	if err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	_, err = fmt.Fprintf(stdout, "%s files=%d bytes=%d seconds=%.3f MiB/s=%.1f\n", *mode, len(files), total, secs, float64(total)/(1<<20)/secs)
	return err
}

// listFiles returns the regular files under dir, relative and slash-separated, and their total size.
func listFiles(dir string) ([]string, int64, error) {
	var files []string
	var total int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		files = append(files, filepath.ToSlash(rel))
		total += info.Size()
		return err
	})
	return files, total, err
}

func putTree(ctx context.Context, dir string, files []string, location string, cfg s3store.Config, workers int) error {
	tree, err := s3store.New(ctx, location, cfg)
	if err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	for _, rel := range files {
		g.Go(func() error {
			f, err := os.Open(filepath.Join(dir, filepath.FromSlash(rel)))
			if err != nil {
				return err
			}
			defer f.Close()
			info, err := f.Stat()
			if err != nil {
				return err
			}
			return tree.Put(ctx, rel, f, info.Size(), "")
		})
	}
	return g.Wait()
}

// putManager is deliberately independent of internal/s3store: the baseline is what a user of
// the SDK writes.
func putManager(ctx context.Context, dir, location, endpoint string, partSize int64, concurrency int) error {
	bucket, prefix, _ := strings.Cut(strings.TrimPrefix(location, "s3://"), "/")
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return err
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
		o.UsePathStyle = o.BaseEndpoint != nil
	})
	tm := transfermanager.New(client, func(o *transfermanager.Options) {
		o.PartSizeBytes = partSize
		o.Concurrency = concurrency
	})
	in := &transfermanager.UploadDirectoryInput{Bucket: &bucket, Source: &dir, Recursive: aws.Bool(true)}
	if prefix = strings.TrimSuffix(prefix, "/"); prefix != "" {
		in.KeyPrefix = &prefix
	}
	_, err = tm.UploadDirectory(ctx, in)
	return err
}
