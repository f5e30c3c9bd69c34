// Command edgepipe-ferretdb runs FerretDB (MongoDB wire protocol, SQLite
// backend) embedded in a small program, for the local stack on machines
// without a genuine mongod.
//
// `go install` of FerretDB's own command panics at start (it looks for a
// build/version/version.txt that is not in the module zip); the embeddable
// package github.com/FerretDB/FerretDB/ferretdb has no such need.
//
// Usage:
//
//	edgepipe-ferretdb serve -listen 127.0.0.1:27017 -data-dir .stack/mongo/data
//	edgepipe-ferretdb ping  -url mongodb://127.0.0.1:27017/ -timeout 2s
//	edgepipe-ferretdb version
//
// Telemetry: the embeddable package never starts FerretDB's telemetry
// reporter and marks telemetry as disabled and locked, so nothing is sent
// anywhere; we also set FERRETDB_TELEMETRY=disable for good measure.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	_ "net/http/pprof" // served only with -pprof
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

func usage() {
	fmt.Fprintf(os.Stderr, "usage: %s serve|ping|version [flags]\n", filepath.Base(os.Args[0]))
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}

	switch os.Args[1] {
	case "serve":
		os.Exit(serve(os.Args[2:]))
	case "ping":
		os.Exit(ping(os.Args[2:]))
	case "version":
		fmt.Println(ferretDBVersion())
	default:
		usage()
	}
}

// ferretDBVersion returns the version of the FerretDB module linked in.
func ferretDBVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/FerretDB/FerretDB" {
				if d.Replace != nil {
					// mongo.sh builds against a copy of the module with our
					// patches laid over it (local_stack/ferretdb/patches)
					return "FerretDB " + d.Version + "+edgepipe-patches"
				}

				return "FerretDB " + d.Version
			}
		}
	}

	return "FerretDB unknown"
}

func serve(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:27017", "TCP address to listen on")
	dataDir := fs.String("data-dir", "", "SQLite data directory (created if absent)")
	pragmas := fs.String("sqlite-params", "", "extra SQLite URI query, e.g. _pragma=synchronous(normal)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	pprofAddr := fs.String("pprof", "", "serve Go's net/http/pprof on this address (e.g. 127.0.0.1:6060) for profiling")
	idIndex := fs.Duration("id-index-interval", 2*time.Second,
		"how often to add the _id lookup index to new collections (0 disables; see idindex.go)")
	_ = fs.Parse(args)

	if *dataDir == "" {
		fmt.Fprintln(os.Stderr, "serve: -data-dir is required")
		return 2
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "serve: bad -log-level: %s\n", err)
		return 2
	}

	logger := slog.New(newQuietHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
	slog.SetDefault(logger)

	// never report anything anywhere (the embedded package does not start the
	// reporter anyway; this covers any code path that reads the variable)
	_ = os.Setenv("FERRETDB_TELEMETRY", "disable")

	dir, err := filepath.Abs(*dataDir)
	if err != nil {
		logger.Error("bad data dir", "err", err)
		return 1
	}

	if err = os.MkdirAll(dir, 0o755); err != nil {
		logger.Error("cannot create data dir", "err", err)
		return 1
	}

	// FerretDB wants a "file:" URI naming a directory, ending with "/".
	// It adds busy_timeout(10000), journal_mode(wal) and auto_vacuum(none)
	// unless given.
	u := &url.URL{Scheme: "file", Opaque: dir + "/", OmitHost: true}
	sqliteURL := u.String()
	if p := strings.TrimPrefix(*pragmas, "?"); p != "" {
		sqliteURL += "?" + p
	}

	if *pprofAddr != "" {
		go func() {
			// net/http/pprof registers its handlers on the default mux.
			if err := http.ListenAndServe(*pprofAddr, nil); err != nil { //nolint:gosec // local diagnostics only
				logger.Error("pprof listener stopped", "err", err)
			}
		}()
	}

	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *listen},
		Logger:    logger,
		Handler:   "sqlite",
		SQLiteURL: sqliteURL,
	})
	if err != nil {
		logger.Error("cannot start FerretDB", "err", err)
		return 1
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	if *idIndex > 0 {
		ix := &idIndexer{dir: dir, interval: *idIndex, logger: logger}
		go ix.run(ctx)
	}

	logger.Info("edgepipe-ferretdb starting",
		"version", ferretDBVersion(), "listen", *listen, "sqlite", sqliteURL, "pid", os.Getpid())

	if err = f.Run(ctx); err != nil {
		logger.Error("FerretDB stopped with error", "err", err)
		return 1
	}

	logger.Info("edgepipe-ferretdb stopped")

	return 0
}

// ping connects with the MongoDB Go driver and runs {ping: 1} on admin.
func ping(args []string) int {
	fs := flag.NewFlagSet("ping", flag.ExitOnError)
	uri := fs.String("url", "mongodb://127.0.0.1:27017/", "MongoDB URL")
	timeout := fs.Duration("timeout", 3*time.Second, "overall timeout")
	quiet := fs.Bool("q", false, "print nothing, exit status only")
	_ = fs.Parse(args)

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	opts := options.Client().ApplyURI(*uri).
		SetServerSelectionTimeout(*timeout).
		SetConnectTimeout(*timeout).
		SetDirect(true)

	client, err := mongo.Connect(ctx, opts)
	if err != nil {
		if !*quiet {
			fmt.Fprintf(os.Stderr, "ping: %s\n", err)
		}
		return 1
	}
	// no Disconnect: it sends endSessions, which FerretDB 1.x does not know
	// and logs as a warning on every health check; exiting closes the socket.

	var res bson.M
	if err = client.Database("admin").RunCommand(ctx, bson.D{{Key: "ping", Value: 1}}).Decode(&res); err != nil {
		if !*quiet {
			fmt.Fprintf(os.Stderr, "ping: %s\n", err)
		}
		return 1
	}

	if !*quiet {
		fmt.Printf("ping ok: %v\n", res["ok"])
	}

	return 0
}
