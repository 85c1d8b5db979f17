package synth

import (
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"strings"
)

// The first three pickles of every legacy checkpoint written with protocol 2 on a little-endian
// machine (torch/serialization.py _legacy_save): the magic number 0x1950a86a20f9469cfc6c, the
// protocol version 1001, and sys_info.
var (
	legacyMagic   = []byte{0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e}
	legacyVersion = []byte{0x80, 0x02, 0x4d, 0xe9, 0x03, 0x2e}
	// {'protocol_version': 1001, 'little_endian': True,
	//  'type_sizes': {'short': 2, 'int': 4, 'long': 4}}
	legacySysInfo = []byte("\x80\x02}q\x00(X\x10\x00\x00\x00protocol_versionq\x01M\xe9\x03" +
		"X\r\x00\x00\x00little_endianq\x02\x88X\n\x00\x00\x00type_sizesq\x03}q\x04(" +
		"X\x05\x00\x00\x00shortq\x05K\x02X\x03\x00\x00\x00intq\x06K\x04X\x04\x00\x00\x00longq\x07K\x04uu.")
)

// writeLegacy writes the multi-pickle format: magic, version, sys_info, the state dict, the
// sorted key list, then for each key in that order an int64 little-endian element count and the
// storage bytes.
func writeLegacy(w io.Writer, tensors []Tensor) error {
	sts, err := storages(tensors)
	if err != nil {
		return err
	}
	byKey := make(map[string]*Tensor, len(sts))
	keys := make([]string, 0, len(sts))
	for _, t := range sts {
		byKey[t.Key] = t
		keys = append(keys, t.Key)
	}
	slices.SortFunc(keys, strings.Compare)
	for _, b := range [][]byte{legacyMagic, legacyVersion, legacySysInfo, stateDict(tensors, true), keyList(keys)} {
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	buf := make([]byte, chunkBytes)
	for _, k := range keys {
		t := byKey[k]
		if _, err := w.Write(binary.LittleEndian.AppendUint64(nil, uint64(t.Numel()))); err != nil {
			return err
		}
		src := t.Content()
		for left := t.Size(); left > 0; {
			b := buf[:min(left, int64(len(buf)))]
			if _, err := io.ReadFull(src, b); err != nil {
				return fmt.Errorf("%s: %w", t.Name, errShortContent)
			}
			if _, err := w.Write(b); err != nil {
				return err
			}
			left -= int64(len(b))
		}
	}
	return nil
}
