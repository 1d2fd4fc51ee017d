package config

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
)

// WriteDiagnostics prints diags in the style of a compiler, one per entry:
//
//	edgesbc.hcl:3:14: error: Invalid IP address: address: ParseAddr("10.91.1"): IPv4 address too short.
//	  address  = "10.91.1"
//	             ^^^^^^^^^
//
// The header is file:line:col: severity: summary: detail. When files holds
// the source of the subject's file, the source line follows with a caret line
// under the subject range (to the end of the line for a range spanning
// lines). A diagnostic without a Subject prints only severity: summary:
// detail. Line breaks inside a detail are folded so each header stays on one
// line for grep and editors. It returns the first write error.
func WriteDiagnostics(w io.Writer, files map[string][]byte, diags hcl.Diagnostics) error {
	var buf bytes.Buffer
	for _, d := range diags {
		if d == nil {
			continue
		}
		buf.Reset()
		if d.Subject != nil {
			fmt.Fprintf(&buf, "%s:%d:%d: ", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column)
		}
		buf.WriteString(severity(d.Severity))
		buf.WriteString(": ")
		buf.WriteString(oneLine(d.Summary))
		if detail := oneLine(d.Detail); detail != "" {
			buf.WriteString(": ")
			buf.WriteString(detail)
		}
		buf.WriteByte('\n')
		if d.Subject != nil {
			if src, ok := files[d.Subject.Filename]; ok {
				writeSnippet(&buf, src, *d.Subject)
			}
		}
		if _, err := w.Write(buf.Bytes()); err != nil {
			return fmt.Errorf("write diagnostics: %w", err)
		}
	}
	return nil
}

func severity(s hcl.DiagnosticSeverity) string {
	switch s {
	case hcl.DiagWarning:
		return "warning"
	default:
		// DiagError, and DiagInvalid which only a buggy producer emits:
		// better shown loudly than hidden.
		return "error"
	}
}

// oneLine folds runs of whitespace, including line breaks, into one space.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// writeSnippet writes the source line holding rng's start and a caret line
// under the range. It writes nothing when rng does not fit src (a stale file
// map must not cause a panic or a misleading caret).
func writeSnippet(buf *bytes.Buffer, src []byte, rng hcl.Range) {
	start := rng.Start.Byte
	if start < 0 || start > len(src) {
		return
	}
	lineStart := bytes.LastIndexByte(src[:start], '\n') + 1
	lineEnd := len(src)
	if i := bytes.IndexByte(src[lineStart:], '\n'); i >= 0 {
		lineEnd = lineStart + i
	}
	line := bytes.TrimSuffix(src[lineStart:lineEnd], []byte("\r"))
	if start > lineStart+len(line) {
		start = lineStart + len(line) // subject on the "\r" itself
	}

	end := rng.End.Byte
	if end > lineStart+len(line) {
		end = lineStart + len(line)
	}
	width := 0
	if end > start {
		width = utf8.RuneCount(src[start:end])
	}
	width = max(width, 1)

	buf.Write(line)
	buf.WriteByte('\n')
	// Keep tabs so the caret lines up however the terminal expands them.
	for _, r := range string(src[lineStart:start]) {
		if r == '\t' {
			buf.WriteByte('\t')
		} else {
			buf.WriteByte(' ')
		}
	}
	buf.WriteString(strings.Repeat("^", width))
	buf.WriteByte('\n')
}
