package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/ptsafe/converter/internal/atomicfile"
	"github.com/ptsafe/converter/internal/batch"
	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/envflag"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/s3store"
	"github.com/ptsafe/converter/internal/store"
)

const batchAbout = `Converts every PyTorch checkpoint under SOURCE into safetensors, in DEST or beside its
source. SOURCE and DEST are each a local directory or an S3 prefix s3://bucket/prefix (AWS
credentials from the standard chain: environment, shared config and profiles; --s3-endpoint or
AWS_ENDPOINT_URL selects an S3-compatible store, with path-style addressing).

Files are classified by content, not by name: checkpoints (zip, legacy; any extension or none)
are converted in the sandbox, at most --workers at once; files holding other pickle data (a
pickled TrainingArguments, a bare pickle, an .npy with objects) are refused and never copied;
everything else (configs, tokenizers, README, .safetensors) is copied to DEST as is. Output names
follow Hugging Face's rules; a sharded set (pytorch_model.bin.index.json and its shards) becomes
the converted shards plus model.safetensors.index.json. Symlinks are followed only when their
target stays inside SOURCE.

A second run converts only what changed (size, modification time or ETag): the run's state is
kept in .converter-batch/ at DEST's root (SOURCE's root in place). --force redoes everything. A
killed run leaves nothing partial at any output name; the next run completes it.

Exit codes: 0 every file converted, skipped, copied or ignored; 3 a file was refused as unsafe;
else 4 a file failed as malformed, unsupported or over a limit; else 1 any other failure; 2 usage
error.`

const treeScanAbout = `

INPUT may also be a directory or an S3 prefix s3://bucket/prefix: every file under it is
classified as batch does and every checkpoint scanned (--workers at once), one line each, then a
summary; --json prints the batch report. Exit codes as for one file, from the worst file.`

// treeFlags are the flags of the commands that walk a tree: batch, and scan of a directory.
type treeFlags struct {
	workers          *int
	include, exclude multiFlag
	endpoint         *string
	scratch          *string
}

func addTreeFlags(c *command, getenv func(string) string) (*treeFlags, error) {
	t := &treeFlags{}
	t.workers = c.fs.Int("workers", 0, "convert at most `N` files at once (default: the number of CPUs)")
	c.fs.Var(&t.include, "include", "only files whose path relative to SOURCE (or base name, for a pattern without /) matches `GLOB` (repeatable; ** spans directories)")
	c.fs.Var(&t.exclude, "exclude", "skip files matching `GLOB` (repeatable; wins over --include)")
	t.endpoint = c.fs.String("s3-endpoint", "", "`URL` of an S3-compatible store (default: AWS_ENDPOINT_URL, else AWS)")
	t.scratch = c.fs.String("scratch", "", "local `DIR` for staging S3 objects (default: the system's temporary directory)")
	if err := envflag.Bind(c.fs, getenv, "workers", "s3-endpoint", "scratch"); err != nil {
		return nil, c.usagef("%v", err)
	}
	return t, nil
}

// options returns the batch options the flags give.
func (t *treeFlags) options(conv convert.Options) batch.Options {
	return batch.Options{
		Workers:    *t.workers,
		Include:    t.include,
		Exclude:    t.exclude,
		Convert:    conv,
		ScratchDir: *t.scratch,
	}
}

// openTree opens a local directory or an s3:// prefix; what names it in messages.
func (t *treeFlags) openTree(ctx context.Context, what, loc string) (store.Tree, error) {
	if strings.HasPrefix(loc, "s3://") {
		tr, err := s3store.New(ctx, loc, s3store.Config{Endpoint: *t.endpoint})
		if err != nil {
			return nil, fmt.Errorf("cannot use %s %s: %w", what, loc, err)
		}
		return tr, nil
	}
	tr, err := store.NewLocal(loc)
	if err != nil {
		return nil, fmt.Errorf("cannot use %s %s: %w", what, loc, fault.PathFree(err))
	}
	return tr, nil
}

func isTree(loc string) bool {
	if strings.HasPrefix(loc, "s3://") {
		return true
	}
	st, err := os.Stat(loc)
	return err == nil && st.IsDir()
}

func runBatch(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	c := newCommand("batch", "SOURCE [DEST]", batchAbout)
	dryRun := c.fs.Bool("dry-run", false, "classify and scan everything, report what would happen, write nothing")
	force := c.fs.Bool("force", false, "convert again what an earlier run already converted")
	remove := c.fs.Bool("remove-source", false, "delete each checkpoint once its output is written and verified")
	report := c.fs.String("report", "", "write the JSON report to `FILE`")
	progress := c.fs.String("progress", "auto", "progress display: `auto` (a bar on a terminal, else a line every few seconds), bar, lines or none")
	tf, err := addTreeFlags(c, getenv)
	if err != nil {
		return err
	}
	in, err := inputFlags(c, getenv)
	if err != nil {
		return err
	}
	pos, conv, err := in.parse(c, args, 1, 2, stdout)
	if err != nil {
		return err
	}
	if *remove && *dryRun {
		return c.usagef("--remove-source and --dry-run contradict each other")
	}
	opts := tf.options(conv)
	opts.DryRun, opts.Force, opts.RemoveSource = *dryRun, *force, *remove
	src, err := tf.openTree(ctx, "SOURCE", pos[0])
	if err != nil {
		return err
	}
	var dst store.Tree
	if len(pos) == 2 {
		if dst, err = tf.openTree(ctx, "DEST", pos[1]); err != nil {
			return err
		}
	}
	bar, err := newBatchProgress(*progress, stderr)
	if err != nil {
		return c.usagef("%v", err)
	}
	opts.Progress = bar
	rep, err := batch.Run(ctx, src, dst, in.engine(stderr), opts)
	bar.close()
	if !finished(rep, err) {
		return err
	}
	done := interrupted(rep)
	if done == "" && rep.DryRun {
		done = "dry run: nothing was written"
	}
	printSummary(stdout, rep, done)
	if *report != "" {
		if err := writeReport(*report, rep); err != nil {
			return err
		}
	}
	return reportStatus(rep)
}

// runTreeScan is `scan` of a directory or S3 prefix: a dry run without DEST that prints one
// line per checkpoint, or the report as JSON.
func runTreeScan(ctx context.Context, tf *treeFlags, in *inputs, conv convert.Options, loc string, asJSON bool, stdout, stderr io.Writer) error {
	src, err := tf.openTree(ctx, "INPUT", loc)
	if err != nil {
		return err
	}
	opts := tf.options(conv)
	opts.ScanOnly = true
	rep, err := batch.Run(ctx, src, nil, in.engine(stderr), opts)
	if !finished(rep, err) {
		return err
	}
	if asJSON {
		if err := printJSON(stdout, rep); err != nil {
			return err
		}
	} else {
		for _, f := range rep.Files {
			if f.Outcome == batch.Copied || f.Outcome == batch.Ignored {
				continue // not a checkpoint: the summary counts them
			}
			if f.Outcome == batch.Converted {
				f.Outcome, f.Output = "safe", "" // a scan converts nothing: say what it found
			}
			fmt.Fprintln(stdout, fileLine(f))
		}
		printSummary(stdout, rep, interrupted(rep))
	}
	return reportStatus(rep)
}

// finished reports whether a run's outcome is its report: it ended, or was interrupted after
// it listed the tree (its report then says what was done); otherwise err says why not.
func finished(rep *batch.Report, err error) bool {
	return err == nil || rep != nil && rep.Interrupted
}

// interrupted is the summary's last line for an interrupted run, "" for one that ended.
func interrupted(rep *batch.Report) string {
	if !rep.Interrupted {
		return ""
	}
	return fmt.Sprintf("interrupted: %d files left; the same command finishes them", rep.Summary.Left)
}

// fileLine is one file's outcome in a line: the outcome, the path, and why.
func fileLine(f batch.File) string {
	line := fmt.Sprintf("%-9s %s", f.Outcome, f.Path)
	if f.Output != "" && f.Error == nil {
		line += " -> " + f.Output
	}
	if f.Error != nil {
		line += ": " + oneLine(f.Error.Detail)
	}
	return line
}

// printSummary prints the counts of each outcome and the bytes read and written, then every
// file that was refused or failed, with its reason, and last the line end, if any.
func printSummary(w io.Writer, rep *batch.Report, end string) {
	s := rep.Summary
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "converted\tskipped\trefused\tfailed\tcopied\tignored\tbytes in\tbytes out\t")
	fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", s.Converted, s.Skipped, s.Refused, s.Failed, s.Copied, s.Ignored, s.BytesIn, s.BytesOut)
	tw.Flush()
	for _, f := range rep.Files {
		if f.Outcome == batch.Refused || f.Outcome == batch.Failed {
			fmt.Fprintln(w, fileLine(f))
		}
	}
	if end != "" {
		fmt.Fprintln(w, end)
	}
}

// writeReport writes the report JSON atomically, replacing an earlier report.
func writeReport(path string, rep *batch.Report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(path, append(b, '\n'), 0o644, atomicfile.Replace); err != nil {
		return fmt.Errorf("write --report %s: %w", path, fault.PathFree(err))
	}
	return nil
}

// reportStatus is the error that gives the process the report's exit status, or nil when it
// is 0. The summary already named every file, so the message is only a count.
func reportStatus(rep *batch.Report) error {
	code := rep.ExitCode()
	msg := fmt.Sprintf("%d refused, %d failed (see above)", rep.Summary.Refused, rep.Summary.Failed)
	if rep.Interrupted {
		if code == 0 {
			code, msg = 1, "(see above)" // an unfinished run is no success; a worse outcome says more
		}
		msg = fmt.Sprintf("interrupted, %d files left; %s", rep.Summary.Left, msg)
	}
	if code == 0 {
		return nil
	}
	return &exitStatus{code: code, msg: msg}
}
