package jobs

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"
)

func schemaVersion(t *testing.T, ctx context.Context, db *sql.DB) int {
	t.Helper()
	var v int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestMigrateOldDatabase opens a job database as the converter left it before the schema was
// versioned (user_version 0, the first table and a failed job in it), migrates it, and finds
// the job intact (without a manifest digest) and the version current; migrating again changes
// nothing, and a database newer than this binary is refused.
func TestMigrateOldDatabase(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "jobs.db")
	db, err := openDB(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, schemaV1); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO converter_job (id, tenant, state, filename, input_size, input_sha256,
		error_type, error_detail, created_at, updated_at) VALUES ('j1', 't', 'failed', 'm.pt', 3, 'abc', 'unsafe', 'os.system', 1, 2)`); err != nil {
		t.Fatal(err)
	}
	if v := schemaVersion(t, ctx, db); v != 0 {
		t.Fatalf("old database at version %d, want 0", v)
	}

	for range 2 {
		if err := migrateSchema(ctx, db); err != nil {
			t.Fatal(err)
		}
		if v := schemaVersion(t, ctx, db); v != len(migrations) {
			t.Errorf("version %d after migrating, want %d", v, len(migrations))
		}
	}
	r, err := getJob(ctx, sqlQuerier{db}, "t", "j1")
	if err != nil || r.State != StateFailed || r.Error == nil || r.Error.Type.String() != "unsafe" || r.Error.Detail != "os.system" || r.manifestSHA256 != "" {
		t.Errorf("job after migrating: %+v, %v; want the failed unsafe job", r, err)
	}

	if _, err := db.ExecContext(ctx, "PRAGMA user_version = 1000"); err != nil {
		t.Fatal(err)
	}
	if err := migrateSchema(ctx, db); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Errorf("a newer database: %v; want it refused", err)
	}
}

// TestMigrateUnversionedWithColumn migrates a database made after the manifest digest column
// was added but before versioning (version 0, the column there): no step fails on it.
func TestMigrateUnversionedWithColumn(t *testing.T) {
	ctx := context.Background()
	db, err := openDB(filepath.Join(t.TempDir(), "jobs.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, schemaV1+`ALTER TABLE converter_job ADD COLUMN manifest_sha256 TEXT;`); err != nil {
		t.Fatal(err)
	}
	if err := migrateSchema(ctx, db); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if _, err := getJob(ctx, sqlQuerier{db}, "", "none"); err != ErrNotFound {
		t.Errorf("reading the migrated table: %v; want ErrNotFound", err)
	}
}
