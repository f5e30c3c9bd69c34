package main

import (
	"context"
	"log/slog"
	"slices"
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
	inner slog.Handler

	// Attributes and groups from Logger.With/WithGroup, applied to inner only
	// when a record is actually written. slog's TextHandler formats them
	// eagerly, and FerretDB's fsql calls With(args) twice per SQL statement for
	// a debug record that is then dropped: with 100 documents of arguments per
	// INSERT that formatting was 13 % of the server's CPU during bulk inserts.
	pending []pendingOp
}

type pendingOp struct {
	group string
	attrs []slog.Attr
}

func newQuietHandler(inner slog.Handler) quietHandler {
	return quietHandler{inner: inner}
}

func (h quietHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.inner.Enabled(ctx, level)
}

// resolved is the inner handler with the pending attributes and groups applied, in order.
func (h quietHandler) resolved() slog.Handler {
	r := h.inner
	for _, op := range h.pending {
		if op.attrs != nil {
			r = r.WithAttrs(op.attrs)
		} else {
			r = r.WithGroup(op.group)
		}
	}

	return r
}

func (h quietHandler) Handle(ctx context.Context, r slog.Record) error {
	if demote(r) {
		if !h.inner.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		r.Level = slog.LevelDebug
	}

	return h.resolved().Handle(ctx, r)
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
	if len(attrs) == 0 {
		return h
	}

	// Clip: an append must never write into a slice a sibling handler shares.
	return quietHandler{inner: h.inner, pending: append(slices.Clip(h.pending), pendingOp{attrs: attrs})}
}

func (h quietHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}

	return quietHandler{inner: h.inner, pending: append(slices.Clip(h.pending), pendingOp{group: name})}
}
