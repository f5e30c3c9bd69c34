package main

import (
	"context"
	"log/slog"
	"strings"
)

// quietHandler demotes FerretDB's chattiest records to debug level so that
// the log tail shown when a start fails carries what matters:
//   - "Connection started/stopped" (info, one pair per client connection,
//     health checks included);
//   - "Response header: ..." (warn, printed before every error response; the
//     "Response message" record that follows has the content);
//   - the error response to `endSessions`, which every pymongo client sends
//     on close and FerretDB 1.x does not implement.
type quietHandler struct {
	slog.Handler
}

func (h quietHandler) Handle(ctx context.Context, r slog.Record) error {
	if demote(r) {
		if !h.Handler.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		r.Level = slog.LevelDebug
	}

	return h.Handler.Handle(ctx, r)
}

func demote(r slog.Record) bool {
	switch {
	case r.Level == slog.LevelInfo &&
		(r.Message == "Connection started" || r.Message == "Connection stopped"):
		return true
	case r.Level == slog.LevelWarn && strings.HasPrefix(r.Message, "Response header: "):
		return true
	case r.Level == slog.LevelWarn && strings.HasPrefix(r.Message, "Response message:") &&
		strings.Contains(r.Message, "no such command: 'endSessions'"):
		return true
	}

	return false
}

func (h quietHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return quietHandler{h.Handler.WithAttrs(attrs)}
}

func (h quietHandler) WithGroup(name string) slog.Handler {
	return quietHandler{h.Handler.WithGroup(name)}
}
