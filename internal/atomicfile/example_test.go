package atomicfile_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/ptsafe/converter/internal/atomicfile"
)

// A writer that streams into the file and gives up on any error: the deferred Abort removes
// the temporary file unless Commit has run, so the destination holds all of it or nothing.
func ExampleCreate() {
	dir, err := os.MkdirTemp("", "example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	dst := filepath.Join(dir, "model.safetensors")

	write := func(content string) error {
		f, err := atomicfile.Create(dst, 0o644, atomicfile.NoReplace)
		if err != nil {
			return err
		}
		defer f.Abort()
		if _, err := f.WriteString(content); err != nil {
			return err
		}
		return f.Commit()
	}
	fmt.Println(write("first"))
	err = write("second")
	fmt.Println(errors.Is(err, fs.ErrExist))
	b, _ := os.ReadFile(dst)
	entries, _ := os.ReadDir(dir)
	fmt.Println(string(b), len(entries))
	// Output:
	// <nil>
	// true
	// first 1
}
