// Package batch converts a whole tree of files (a model repository, a local model store, an S3
// prefix) from SOURCE into DEST, or in place, and scans trees: the engine of `converter batch`
// and of `converter scan DIR`.
//
// Every file is classified by its content, never by its name: a file torch.load could read as
// a container or a pickle goes to the Engine (the sandbox for untrusted trees), which converts
// it, refuses it as unsafe, or fails it; anything else is copied as it is to DEST, so that DEST
// is a usable repository. A sharded checkpoint gets the safetensors index of its converted
// shards. One file's failure never stops the run: it is an outcome in the Report.
//
// A run is resumable: receipts in StateDir at DEST's root record each source's outcome, so
// that the next run redoes only what changed, and no output ever appears partially at its
// name (outputs are committed atomically by the engine or by store.Tree.Put). A dry run or a
// scan writes nothing at all.
//
// An output for an S3 DEST is converted into a staging copy in scratch space, hashed as it is
// written (the whole file and each tensor; each upload part too for an output of more than
// one request), and uploaded with those digests (s3store.Tree.PutFile): the store checks the
// object, or every part, against the digest taken over the bytes the conversion wrote, so the
// uploaded object is verified without reading the copy back or hashing it again.
//
// It never prints and never exits: the CLI owns the progress display and the exit status
// (Report.ExitCode).
package batch
