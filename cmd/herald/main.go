// Command herald is Herald's single binary: the server, migrations and administration.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	_ "time/tzdata" // time zone names work on machines without a tz database

	"github.com/spf13/cobra"

	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/problem"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg := config.FromEnv()
	root := newRoot(&cfg)
	if err := root.ExecuteContext(ctx); err != nil {
		if p, ok := problem.As(err); ok {
			fmt.Fprintln(os.Stderr, "herald:", p.Message)
		} else {
			fmt.Fprintln(os.Stderr, "herald:", err)
		}
		if errors.Is(err, context.Canceled) {
			os.Exit(130)
		}
		os.Exit(1)
	}
}

func newRoot(cfg *config.Config) *cobra.Command {
	root := &cobra.Command{
		Use:           "herald",
		Short:         "Herald prepares, approves, sends and measures marketing and operational messages",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&cfg.DB, "db", cfg.DB, "database: a SQLite file path or a postgres:// URL (HERALD_DB)")
	root.AddCommand(serveCmd(cfg), migrateCmd(cfg), userCmd(cfg), tokenCmd(cfg), importCmd(cfg), deliveryCmd(cfg), bounceCmd(), versionCmd())
	root.AddCommand(benchCmd())
	return root
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print Herald's version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "herald", buildVersion())
		},
	}
}

// writeJSON writes v to w as indented JSON, as every command with --json prints its result.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printResult prints a command's result: as JSON with --json, else as its String.
func printResult(w io.Writer, v fmt.Stringer, asJSON bool) error {
	if asJSON {
		return writeJSON(w, v)
	}
	_, err := fmt.Fprint(w, v)
	return err
}
