package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/spf13/cobra"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/tracking"
	"github.com/heraldhq/herald/internal/web"
)

// benchTrackCmd runs the tracking benchmark (issue 6) and prints what it measured.
func benchTrackCmd() *cobra.Command {
	var o tracking.BenchTrackOptions
	var asJSON, plainMux bool
	cmd := &cobra.Command{
		Use:   "track",
		Short: "Load the open pixel and the click redirect with wrk, events stored, against a bare net/http pixel",
		Long: `Creates a fresh SQLite database holding one delivery with N recipients marked sent, serves
Herald's tracking endpoints on 127.0.0.1 through the same handler tree as serve (web.NewServer),
with hits queued and written to the database, and a bare net/http handler serving the same 43-byte
GIF on another port. wrk (apt-get install wrk) then loads, one after the other, the bare pixel,
Herald's pixel and Herald's click redirect, each request with a token picked at random. The
targets are at least 20,000 requests/s on each Herald endpoint and a p99 latency at most 1.5
times the bare handler's, measured in the same run. After the runs the hit queue is flushed and
the tracking_events rows are counted against the requests served. wrk and Herald share the
machine's cores; on a machine shared with other work every figure is a lower bound.`,
		Example: `  herald bench track
  herald bench track --duration 30s --connections 100 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Progress = cmd.ErrOrStderr()
			if !plainMux {
				o.Handler = func(db *store.DB, h *tracking.Handlers) http.Handler {
					log := slog.New(slog.DiscardHandler)
					return web.NewServer(web.Deps{DB: db, Clock: clock.Real{}, Log: log, Tracking: h}).Handler()
				}
			}
			res, err := tracking.BenchTrack(cmd.Context(), o)
			if errors.Is(err, tracking.ErrNoWrk) {
				return fmt.Errorf("%w (https://github.com/wg/wrk elsewhere)", err)
			}
			if err != nil {
				return err
			}
			if !plainMux {
				res.Handler = "serve's handler tree (web.NewServer)"
			}
			return printResult(cmd.OutOrStdout(), res, asJSON)
		},
	}
	f := cmd.Flags()
	f.DurationVar(&o.Duration, "duration", 0, "length of each of the three wrk runs, in whole seconds (default 10s)")
	f.IntVar(&o.Threads, "threads", 0, "wrk threads (default 2)")
	f.IntVar(&o.Connections, "connections", 0, "wrk connections (default 50)")
	f.IntVar(&o.Recipients, "n", 0, "recipients of the bench delivery, hence distinct tokens (default 10000)")
	f.StringVar(&o.Wrk, "wrk", "", "the wrk binary (default: wrk in PATH)")
	f.StringVar(&o.DB, "db", "", "SQLite file to create (must not exist) or PostgreSQL URL; empty uses a temporary directory")
	f.BoolVar(&plainMux, "plain-mux", false, "serve the tracking handlers on a bare http.ServeMux instead of serve's handler tree")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}
