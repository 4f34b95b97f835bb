package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/robfig/cron/v3"
	"github.com/spf13/cobra"

	"github.com/heraldhq/herald/internal/audience"
	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/delivery"
	"github.com/heraldhq/herald/internal/profile"
	"github.com/heraldhq/herald/internal/quarantine"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/web"
	"github.com/heraldhq/herald/internal/webhook"
)

func serveCmd(cfg *config.Config) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the Herald server (HTTP API, sending engine, scheduler)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return serve(cmd.Context(), cmd, cfg)
		},
	}
	cmd.Flags().StringVar(&cfg.Addr, "addr", cfg.Addr, "HTTP listen address (HERALD_ADDR)")
	cmd.Flags().StringVar(&cfg.PublicURL, "public-url", cfg.PublicURL, "base URL written into links (HERALD_PUBLIC_URL)")
	return cmd
}

func serve(ctx context.Context, cmd *cobra.Command, cfg *config.Config) error {
	if err := cfg.Check(); err != nil {
		return err
	}
	log := cfg.Logger()
	db, err := store.Open(ctx, cfg.DB)
	if err != nil {
		return err
	}
	defer db.Close()
	n, err := db.Migrate(ctx)
	if err != nil {
		return err
	}
	log.Info("database ready", "db", db.Describe(), "migrations_applied", n)

	clk := clock.Real{}
	authSvc := auth.NewService(db, clk, log)
	created, generated, err := authSvc.EnsureAdmin(ctx, cfg.AdminPassword)
	if err != nil {
		return err
	}
	if created && generated != "" {
		fmt.Fprintf(cmd.OutOrStdout(), "Created the administrator \"admin\" with the password:\n\n    %s\n\nIt is shown only this once.\n", generated)
	} else if created {
		log.Info("created the administrator \"admin\" with the password from HERALD_ADMIN_PASSWORD")
	}

	quarantineSvc := quarantine.NewService(db, clk, log)
	deliverySvc := delivery.NewService(db, clk, log)
	if n, err := deliverySvc.FailInterrupted(ctx); err != nil {
		return err
	} else if n > 0 {
		log.Warn("preparations interrupted by a stop were marked prepare_failed", "deliveries", n)
	}
	srv := web.NewServer(web.Deps{DB: db, Auth: authSvc, Clock: clk, Log: log,
		Config:     web.Config{PublicURL: cfg.PublicURL, Version: buildVersion()},
		Quarantine: quarantineSvc,
		Profiles:   profile.NewService(db, clk, log),
		Audiences:  audience.NewService(db, clk, log),
		Deliveries: deliverySvc,
		Webhooks:   webhook.NewService(db, clk, log),
	})
	go runScheduler(ctx, deliverySvc, clk, log)
	go (&webhook.Dispatcher{DB: db, Clock: clk, Log: log}).Run(ctx, 2*time.Second)

	// Nightly jobs. Each is idempotent, so several nodes running them is harmless.
	jobs := cron.New(cron.WithLocation(time.UTC))
	if _, err := jobs.AddFunc("17 3 * * *", func() {
		n, err := quarantineSvc.Cleanup(ctx, clk.Now())
		if err != nil {
			log.Error("quarantine clean-up failed", "err", err)
			return
		}
		log.Info("quarantine clean-up", "returned_to_valid", n)
	}); err != nil {
		return fmt.Errorf("schedule the quarantine clean-up: %w", err)
	}
	jobs.Start()
	defer jobs.Stop()
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s (HERALD_ADDR): %w", cfg.Addr, err)
	}
	httpSrv := &http.Server{
		Handler:           srv.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
	}
	log.Info("Herald is listening", "addr", ln.Addr().String(), "public_url", cfg.PublicURL, "version", buildVersion())
	errc := make(chan error, 1)
	go func() { errc <- httpSrv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("HTTP server: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := httpSrv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("shut down HTTP server: %w", err)
	}
	log.Info("stopped")
	return nil
}

func migrateCmd(cfg *config.Config) *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Apply database migrations and exit",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			db, err := store.Open(cmd.Context(), cfg.DB)
			if err != nil {
				return err
			}
			defer db.Close()
			n, err := db.Migrate(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %d migration(s) applied\n", db.Describe(), n)
			return nil
		},
	}
}

// openAuth opens and migrates the database for an administration command.
func openAuth(ctx context.Context, cfg *config.Config) (*store.DB, *auth.Service, error) {
	db, err := store.Open(ctx, cfg.DB)
	if err != nil {
		return nil, nil, err
	}
	if _, err := db.Migrate(ctx); err != nil {
		db.Close()
		return nil, nil, err
	}
	return db, auth.NewService(db, clock.Real{}, cfg.Logger()), nil
}

// runScheduler starts the send of scheduled deliveries whose contact date has come, checking
// every second until ctx ends. Starting is a checked state change, so several nodes running
// it at once start each delivery once.
func runScheduler(ctx context.Context, svc *delivery.Service, clk clock.Clock, log *slog.Logger) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ids, err := svc.DueScheduled(ctx, clk.Now())
		if err != nil && ctx.Err() == nil {
			log.Error("scheduler", "err", err)
		}
		for _, id := range ids {
			log.Info("scheduled delivery started", "delivery", id)
		}
	}
}
