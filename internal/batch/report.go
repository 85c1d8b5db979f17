package batch

import (
	"time"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
)

// The outcomes of one file, as the report spells them.
const (
	Converted = "converted" // a checkpoint converted (or, in a dry run or scan, one that would be)
	Skipped   = "skipped"   // already converted or copied by an earlier run; or see File.Detail
	Refused   = "refused"   // unsafe: the offending globals are listed
	Failed    = "failed"    // malformed, unsupported, over a limit, or internal: File.Error says
	Copied    = "copied"    // a plain file copied as it is to DEST
	Ignored   = "ignored"   // excluded by a filter, or an entry Walk did not follow
)

// Report is the record of one run, written by `converter batch --report` and printed by
// `converter scan --json DIR`. Field names are a stable contract.
type Report struct {
	ConverterVersion string    `json:"converter_version"`
	Source           string    `json:"source"`
	Destination      string    `json:"destination"`
	DryRun           bool      `json:"dry_run"`
	StartedAt        time.Time `json:"started_at"`
	FinishedAt       time.Time `json:"finished_at"`
	Summary          Summary   `json:"summary"`
	// Interrupted says that the run was stopped (a signal, a canceled context) before every
	// file had its outcome: Summary.Left files have none and are not listed, and running the
	// same command again finishes them.
	Interrupted bool `json:"interrupted,omitempty"`
	// Files lists every file with an outcome, in lexical order of Path. A plain file with no
	// DEST to copy it to (in place, or a scan) has none and is not listed.
	Files []File `json:"files"`
}

// Summary counts the outcomes. BytesIn is the size of the sources read this run (skipped and
// ignored files are not read); BytesOut the bytes written to DEST (outputs, copies, indexes).
type Summary struct {
	Converted int   `json:"converted"`
	Skipped   int   `json:"skipped"`
	Refused   int   `json:"refused"`
	Failed    int   `json:"failed"`
	Copied    int   `json:"copied"`
	Ignored   int   `json:"ignored"`
	BytesIn   int64 `json:"bytes_in"`
	BytesOut  int64 `json:"bytes_out"`
	// Left counts the files an interrupted run did not finish (see Report.Interrupted).
	Left int `json:"left,omitempty"`
}

// File is the outcome of one file of SOURCE.
type File struct {
	// Path is relative to SOURCE; Output relative to DEST (SOURCE in place).
	Path         string `json:"path"`
	Outcome      string `json:"outcome"`
	Output       string `json:"output,omitempty"`
	SourceSHA256 string `json:"source_sha256,omitempty"`
	OutputSHA256 string `json:"output_sha256,omitempty"`
	// Error is why a file was refused or failed.
	Error *convert.ErrorInfo `json:"error,omitempty"`
	// Globals are a refused file's offending globals (dangerous or unknown).
	Globals []convert.GlobalRef `json:"globals,omitempty"`
	// Detail says why a file was ignored, or skipped for a reason other than an earlier run.
	Detail string `json:"detail,omitempty"`
}

// ExitCode is the CLI's exit status for the run: 3 if any file was refused as unsafe; else 4
// if any failed as malformed, unsupported or over a limit; else 1 if any other failure; else 0.
func (r *Report) ExitCode() int {
	rank := map[int]int{0: 0, 1: 1, 4: 2, 3: 3}
	code := 0
	for _, f := range r.Files {
		if f.Outcome != Refused && f.Outcome != Failed {
			continue
		}
		c := fault.Internal.ExitCode()
		if f.Error != nil {
			c = f.Error.Type.ExitCode()
		}
		if rank[c] > rank[code] {
			code = c
		}
	}
	return code
}

// summarize counts the outcomes of r.Files; BytesIn and BytesOut are kept.
func (r *Report) summarize() {
	s := &r.Summary
	for _, f := range r.Files {
		switch f.Outcome {
		case Converted:
			s.Converted++
		case Skipped:
			s.Skipped++
		case Refused:
			s.Refused++
		case Failed:
			s.Failed++
		case Copied:
			s.Copied++
		case Ignored:
			s.Ignored++
		}
	}
}

// failure is a file's classified error for the report.
func failure(err error) *convert.ErrorInfo {
	return &convert.ErrorInfo{Type: fault.KindOf(err), Detail: err.Error()}
}
