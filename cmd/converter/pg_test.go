package main

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/ptsafe/converter/internal/testkit"
)

// migrate creates the job table and River's tables in an empty database, from --db or
// CONVERTER_DB, and running it again changes nothing; without a postgres:// URL it is a usage
// error.
func TestMigrate(t *testing.T) {
	url := testkit.StartPostgres(t)
	for _, c := range []struct {
		name string
		args []string
		env  map[string]string
	}{
		{"flag", []string{"migrate", "--db", url}, nil},
		{"environment, again", []string{"migrate"}, map[string]string{"CONVERTER_DB": url}},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(t.Context(), c.args, func(k string) string { return c.env[k] }, nil, &stdout, &stderr); code != 0 {
			t.Fatalf("%s: exit %d: %s", c.name, code, stderr.String())
		}
		if !strings.Contains(stdout.String(), "migrated") {
			t.Errorf("%s: stdout %q, want it to say migrated", c.name, stdout.String())
		}
	}
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, table := range []string{"converter_job", "river_job", "river_migration"} {
		var exists bool
		if err := conn.QueryRow(t.Context(), "SELECT to_regclass($1) IS NOT NULL", table).Scan(&exists); err != nil || !exists {
			t.Errorf("table %s after migrate: exists %v (%v), want it", table, exists, err)
		}
	}

	if _, err := conn.Exec(t.Context(), "UPDATE converter_schema SET version = 1000"); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	if code := run(t.Context(), []string{"migrate", "--db", url}, func(string) string { return "" }, nil, &stderr, &stderr); code != 1 || !strings.Contains(stderr.String(), "newer") {
		t.Errorf("migrate of a newer database: exit %d, %q; want 1 saying it is newer", code, stderr.String())
	}
	stderr.Reset()
	if code := run(t.Context(), []string{"migrate", "--db", "jobs.db"}, func(string) string { return "" }, nil, &stderr, &stderr); code != 2 {
		t.Errorf("migrate --db jobs.db: exit %d, want 2 (usage)", code)
	}
}

// serve --db keeps its jobs in PostgreSQL: a job uploaded through it converts, its row is in the
// database, and the data directory holds no SQLite job store (only blobs).
func TestServePostgres(t *testing.T) {
	bin := buildConverter(t)
	url := testkit.StartPostgres(t)
	data := t.TempDir()
	srv := startServer(t, bin, data, "--db", url)
	job := postFixture(t, srv, "mymodel.pt")
	if got := waitJob(t, srv, job.ID); got.State != "succeeded" || got.Output == nil {
		t.Fatalf("job = %+v, want succeeded with an output", got)
	}
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var state string
	if err := conn.QueryRow(t.Context(), "SELECT state FROM converter_job WHERE id = $1", job.ID).Scan(&state); err != nil || state != "succeeded" {
		t.Errorf("job row in PostgreSQL: %q (%v), want succeeded", state, err)
	}
	if _, err := os.Stat(filepath.Join(data, "jobs.db")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("data directory has a SQLite job store (%v), want none with --db", err)
	}
}
