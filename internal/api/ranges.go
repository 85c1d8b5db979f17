package api

import (
	"cmp"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
)

// maxRanges is how many ranges one download may ask for once overlapping and adjacent ones are
// merged. Each range of a multipart/byteranges answer costs a part header of about 100 bytes,
// so unbounded ranges turn a small file into a much larger answer (192 one-byte ranges of a
// 192-byte file: 27 KB).
const maxRanges = 4

type byteRange struct{ start, end int64 } // [start, end)

// limitRanges returns the Range header value to answer for a representation of size bytes: the
// satisfiable ranges of spec, sorted, with overlapping and adjacent ones merged (RFC 9110
// section 14.2 lets a server coalesce), or "" when more than maxRanges remain, so that the whole
// representation is sent with 200 (a server may ignore Range). A spec that is not a valid
// bytes range set, or has no satisfiable range, is returned unchanged for http.ServeContent to
// answer as it does (416). Parsing follows ServeContent's own rules.
func limitRanges(spec string, size int64) string {
	ranges, ok := parseRanges(spec, size)
	if !ok || len(ranges) == 0 {
		return spec
	}
	slices.SortFunc(ranges, func(a, b byteRange) int { return cmp.Compare(a.start, b.start) })
	merged := ranges[:1]
	for _, r := range ranges[1:] {
		if last := &merged[len(merged)-1]; r.start <= last.end {
			last.end = max(last.end, r.end)
		} else {
			merged = append(merged, r)
		}
	}
	if len(merged) > maxRanges {
		return ""
	}
	var b strings.Builder
	b.WriteString("bytes=")
	for i, r := range merged {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatInt(r.start, 10) + "-" + strconv.FormatInt(r.end-1, 10))
	}
	return b.String()
}

// parseRanges returns the satisfiable ranges of a "bytes=" range set, clipped to size; ok is
// false when the set does not parse.
func parseRanges(spec string, size int64) (ranges []byteRange, ok bool) {
	set, found := strings.CutPrefix(spec, "bytes=")
	if !found {
		return nil, false
	}
	for ra := range strings.SplitSeq(set, ",") {
		ra = textproto.TrimString(ra)
		if ra == "" {
			continue
		}
		first, last, found := strings.Cut(ra, "-")
		if !found {
			return nil, false
		}
		first, last = textproto.TrimString(first), textproto.TrimString(last)
		if first == "" { // suffix range: the last N bytes
			n, err := strconv.ParseInt(last, 10, 64)
			if err != nil || n < 0 {
				return nil, false
			}
			if n = min(n, size); n > 0 {
				ranges = append(ranges, byteRange{size - n, size})
			}
			continue
		}
		start, err := strconv.ParseInt(first, 10, 64)
		if err != nil || start < 0 {
			return nil, false
		}
		end := size
		if last != "" {
			e, err := strconv.ParseInt(last, 10, 64)
			if err != nil || e < start {
				return nil, false
			}
			end = min(e, size-1) + 1 // not e+1, which overflows at MaxInt64
		}
		if start < size {
			ranges = append(ranges, byteRange{start, end})
		}
	}
	return ranges, true
}
