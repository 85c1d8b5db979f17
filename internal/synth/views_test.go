package synth

import (
	"archive/zip"
	"bytes"
	"io"
	"strings"
	"testing"
)

// TestWriteViews checks that every view of a Views checkpoint shares one storage record, whose
// bytes are the storage's, in each zip format, and that views wrap around the storage.
func TestWriteViews(t *testing.T) {
	for _, format := range []Format{ZipStored, ZipDeflated} {
		t.Run(format.String(), func(t *testing.T) {
			v := Views{Format: format, StorageElems: 100, Count: 50, Shape: []int64{3, 4}, Stride: []int64{0, 2}, Step: 9, Seed: 3}
			var buf bytes.Buffer
			if err := WriteViews(&buf, v); err != nil {
				t.Fatal(err)
			}
			zr, err := zip.NewReader(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
			if err != nil {
				t.Fatal(err)
			}
			var records []string
			for _, f := range zr.File {
				if strings.HasPrefix(f.Name, "archive/data/") {
					records = append(records, f.Name)
				}
			}
			if len(records) != 1 || records[0] != "archive/data/0" {
				t.Fatalf("storage records %v; want one, archive/data/0", records)
			}
			rc, err := zr.Open("archive/data/0")
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(rc)
			if err != nil {
				t.Fatal(err)
			}
			st := v.Storage()
			want, _ := io.ReadAll(st.Content())
			if !bytes.Equal(got, want) {
				t.Errorf("record holds %d bytes unlike the storage's %d", len(got), len(want))
			}
		})
	}
	v := Views{StorageElems: 100, Shape: []int64{3, 4}, Stride: []int64{0, 2}, Step: 9}
	// A view spans 7 elements, so 94 starts fit: view 11 starts at 99 mod 94.
	if got := v.Offset(11); got != 5 {
		t.Errorf("Offset(11) = %d; want 5", got)
	}
}

// TestWriteViewsRejects lists the Views specs that describe no valid checkpoint.
func TestWriteViewsRejects(t *testing.T) {
	tests := []struct {
		name string
		v    Views
		want string
	}{
		{"no views", Views{StorageElems: 4, Shape: []int64{4}, Stride: []int64{1}}, "want at least one"},
		{"stride per dimension", Views{StorageElems: 4, Count: 1, Shape: []int64{4}}, "a stride per dimension"},
		{"negative stride", Views{StorageElems: 4, Count: 1, Shape: []int64{2}, Stride: []int64{-1}}, "strides >= 0"},
		{"view past the storage", Views{StorageElems: 4, Count: 1, Shape: []int64{5}, Stride: []int64{1}}, "spans 5 elements"},
		{"unknown format", Views{Format: Format(9), StorageElems: 4, Count: 1, Shape: []int64{4}, Stride: []int64{1}}, "unknown format"},
	}
	for _, tt := range tests {
		if err := WriteViews(io.Discard, tt.v); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v; want one containing %q", tt.name, err, tt.want)
		}
	}
}
