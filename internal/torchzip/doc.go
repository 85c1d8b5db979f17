// Package torchzip reads the containers PyTorch checkpoints come in: it sniffs the kind by magic
// bytes (never by extension) in torch.load's order, validates a torch zip archive, splits a
// legacy multi-pickle file into its streams, and gives streaming, size-checked readers over each
// storage's bytes.
//
// Its promise is one reading, torch's: a file is accepted only when every reader that matters
// reads it the same way, so that the pickle judged here is the pickle torch would run.
//   - A zip is read by one strict parser of our own (cdir.go): exactly one end record, at the
//     end and without a comment; a ZIP64 locator, when present, used as miniz uses it and
//     agreeing with the 32-bit fields; no prepended data; entries that fill the directory
//     exactly, with extra fields that tile and never repeat an id; the first local header at 0.
//     archive/zip's reading is cross-checked entry by entry, local headers must agree with the
//     directory, every entry's bytes lie inside its extent, and names are looked up with
//     miniz's ASCII case folding (zip.go).
//   - A file that is not a zip is a tar when Python's tarfile would open it, ustar magic or not
//     (torch.load tries tarfile before the legacy pickles), and is then refused (tar.go).
//
// Anything ambiguous is refused, and its pickles are still scanned under every reading (each
// local header of a refused zip, a tar's members as torch's tar loader walks them and the same
// bytes as legacy pickles), so that dangerous content is reported as unsafe, never hidden
// behind "malformed". testdata/differential/torchdiff.py checks all this against torch itself.
//
// It pre-scans every pickle stream it finds (through internal/unpickler) but never runs a
// pickle and never extracts anything to disk.
package torchzip
