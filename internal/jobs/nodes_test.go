package jobs_test

import (
	"bytes"
	"context"
	"errors"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/jackc/pgx/v5"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/jobs"
	"github.com/ptsafe/converter/internal/s3store"
	"github.com/ptsafe/converter/internal/testkit"
)

// An API-only node needs a PostgreSQL database and an S3 store: on SQLite, or with its uploads
// in its own data directory, no other node could work its jobs.
func TestAPIOnlyNeedsSharedStores(t *testing.T) {
	for _, cfg := range []jobs.Config{
		{Store: "s3://bucket/jobs"},
		{Database: "postgres://localhost/jobs"},
	} {
		cfg.Dir, cfg.Converter, cfg.APIOnly = t.TempDir(), succeeding, true
		if s, err := jobs.Open(t.Context(), cfg); !errors.Is(err, jobs.ErrAPIOnlyAlone) {
			if s != nil {
				s.Close()
			}
			t.Errorf("APIOnly with database %q, store %q: %v; want refused", cfg.Database, cfg.Store, err)
		}
	}
}

// An API-only node takes jobs and never converts one: a node that works jobs converts it. It
// still does the queue's upkeep: alone on the database, it expires the finished job (the
// other node keeps jobs a week).
func TestPostgresAPIOnlyNode(t *testing.T) {
	f := newS3Fixture(t, succeeding)
	f.cfg.Database = testkit.StartPostgres(t)
	var converted atomic.Int32
	api := f.cfg
	api.Dir, api.APIOnly, api.Retention = t.TempDir(), true, time.Second
	api.Converter = converterFunc(func(context.Context, string, string, convert.Options) (*convert.Manifest, error) {
		converted.Add(1)
		return nil, errors.New("an API-only node ran a conversion")
	})
	a := openConfig(t, api)
	j := submit(t, a, "checkpoint")
	worker, err := jobs.Open(t.Context(), f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := worker.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := waitFor(t, a, j.ID, "finished", terminal); got.State != jobs.StateSucceeded {
		t.Errorf("job = %s %+v; want succeeded on the worker", got.State, got.Error)
	}
	stop(t, worker)
	if n := converted.Load(); n != 0 {
		t.Errorf("the API-only node ran %d conversions; want none", n)
	}
	waitFor(t, a, j.ID, "expired by the API-only node", func(_ jobs.Job, err error) bool { return errors.Is(err, jobs.ErrNotFound) })
}

// An attempt first aborts the multipart uploads a previous attempt of its job left (its node
// died mid-upload): they would stay stored, unseen, until the sweep's day of grace.
func TestS3AttemptAbortsPreviousAttemptsUploads(t *testing.T) {
	f := newS3Fixture(t, succeeding)
	s, err := jobs.Open(t.Context(), f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	j := submit(t, s, "checkpoint")
	s.Close()
	key := aws.String("jobs/" + j.ID + "/output.safetensors")
	up, err := f.client.CreateMultipartUpload(t.Context(), &s3.CreateMultipartUploadInput{Bucket: aws.String(f.bucket), Key: key})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.UploadPart(t.Context(), &s3.UploadPartInput{Bucket: aws.String(f.bucket), Key: key, UploadId: up.UploadId,
		PartNumber: aws.Int32(1), Body: bytes.NewReader(make([]byte, s3store.MinPartSize))}); err != nil {
		t.Fatal(err)
	}
	s = openConfig(t, f.cfg)
	if got := waitFor(t, s, j.ID, "finished", terminal); got.State != jobs.StateSucceeded {
		t.Errorf("job = %s %+v; want succeeded", got.State, got.Error)
	}
	if n := f.uploads(t); n != 0 {
		t.Errorf("multipart uploads after the attempt: %d; want none", n)
	}
}

// A node whose database stops taking connections is not ready, and says it is the database.
func TestPostgresReadyNamesTheDatabase(t *testing.T) {
	database := testkit.StartPostgres(t)
	s := openConfig(t, jobs.Config{Dir: t.TempDir(), Database: database, Converter: succeeding})
	if err := s.Ready(t.Context()); err != nil {
		t.Fatalf("Ready = %v; want nil", err)
	}
	// A connection to the server's postgres database, whence the job database is closed.
	u, err := url.Parse(database)
	if err != nil {
		t.Fatal(err)
	}
	name := strings.TrimPrefix(u.Path, "/")
	u.Path = "/postgres"
	conn, err := pgx.Connect(t.Context(), u.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	// Its open connections end and no new one is accepted, as when the server goes away.
	if _, err := conn.Exec(t.Context(), `ALTER DATABASE "`+name+`" ALLOW_CONNECTIONS false`); err != nil {
		t.Fatal(err)
	}
	// Back before the test's cleanup, which stops the node on it.
	defer conn.Exec(context.Background(), `ALTER DATABASE "`+name+`" ALLOW_CONNECTIONS true`)
	if _, err := conn.Exec(t.Context(), `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, name); err != nil {
		t.Fatal(err)
	}
	if err := s.Ready(t.Context()); err == nil || !strings.Contains(err.Error(), "job database does not answer") {
		t.Errorf("Ready with the database gone = %v; want an error naming the job database", err)
	}
}
