package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/robfig/cron/v3"
	"github.com/spf13/cobra"

	"github.com/heraldhq/herald/internal/audience"
	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/bounce"
	"github.com/heraldhq/herald/internal/channel"
	"github.com/heraldhq/herald/internal/channel/email"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/delivery"
	"github.com/heraldhq/herald/internal/profile"
	"github.com/heraldhq/herald/internal/quarantine"
	"github.com/heraldhq/herald/internal/sending"
	"github.com/heraldhq/herald/internal/stats"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/tracking"
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
	// The address first: a second serve started by mistake (the port taken) must stop before
	// its engine claims a batch that its exit would leave in flight.
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s (HERALD_ADDR): %w", cfg.Addr, err)
	}
	defer ln.Close()
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
	profileSvc := profile.NewService(db, clk, log)
	deliverySvc := delivery.NewService(db, clk, log)
	if n, err := deliverySvc.FailInterrupted(ctx); err != nil {
		return err
	} else if n > 0 {
		log.Warn("preparations interrupted by a stop were marked prepare_failed", "deliveries", n)
	}
	trackingHandlers, recorder, links, sink, err := startTracking(ctx, db, cfg, profileSvc, log)
	if err != nil {
		return err
	}
	statsSvc := stats.NewService(db, clk, log)
	go statsSvc.RunReconcile(ctx, time.Hour)

	// Mail to a List-Unsubscribe address is written as the same opt-out as a one-click one.
	optOut := func(ctx context.Context, logID, deliveryID int64) error {
		return sink.WriteHits(ctx, []tracking.Hit{{Ref: tracking.Ref{LogID: logID, DeliveryID: deliveryID, Link: tracking.NoLink, Kind: tracking.KindOptOut},
			Kind: tracking.KindOptOut, At: clk.Now(), UserAgent: "mail to the List-Unsubscribe address"}})
	}
	bounceHooks, bounceListener, err := startBounces(ctx, db, cfg, clk, quarantineSvc, optOut, log)
	if err != nil {
		return err
	}
	srv := web.NewServer(web.Deps{DB: db, Auth: authSvc, Clock: clk, Log: log,
		Config:     web.Config{PublicURL: cfg.PublicURL, Version: buildVersion()},
		Quarantine: quarantineSvc,
		Profiles:   profileSvc,
		Audiences:  audience.NewService(db, clk, log),
		Deliveries: deliverySvc,
		Webhooks:   webhook.NewService(db, clk, log),
		Stats:      statsSvc,
		Tracking:   trackingHandlers,
		Links:      links,
		Bounces:    bounceHooks,
	})
	srv.Registry().MustRegister(recorder)
	engine, sender, err := startEngine(ctx, db, cfg, clk, deliverySvc, quarantineSvc, links, log)
	if err != nil {
		return err
	}
	srv.Sending = engine
	srv.Registry().MustRegister(engine)
	if c, ok := sender.(prometheus.Collector); ok { // the SMTP transport: relays, throttled domains
		srv.Registry().MustRegister(c)
	}
	// Proofs go out through the same channel as the sends.
	dkim, _ := loadDKIM(cfg) // read once already by startEngine, which reported any error
	deliverySvc.ProofSender = &sending.ProofSender{Sender: sender, Composer: &email.Composer{Domain: messageIDDomain(cfg), DKIM: dkim}}
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
	if bounceListener != nil {
		if err := bounceListener.Shutdown(shutdownCtx); err != nil {
			log.Warn("shutting down the bounce listener", "err", err)
		}
	}
	// Batches in hand are written back before the process ends; then the connections close.
	engine.Stop()
	if err := sender.Close(); err != nil {
		log.Warn("closing the sender", "err", err)
	}
	// Tracking hits queued in memory are written before the process ends.
	if err := recorder.Close(shutdownCtx); err != nil {
		log.Error("tracking hits not written", "err", err)
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

// startTracking builds the /t/ endpoints: the signing key (made once, shared by every node
// through the settings table), click targets, the hit queue and its database writer.
func startTracking(ctx context.Context, db *store.DB, cfg *config.Config, profiles *profile.Service, log *slog.Logger) (*tracking.Handlers, *tracking.Recorder, *tracking.Links, *tracking.SQLSink, error) {
	key, err := tracking.LoadOrCreateKey(ctx, db)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	signer, err := tracking.NewSigner(key)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	links, err := tracking.NewLinks(cfg.PublicURL, signer)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	targets := tracking.NewTargets(tracking.NewSQLTargets(db, 0), tracking.TargetsOptions{Fallback: cfg.PublicURL})
	sink := tracking.NewSQLSink(db, tracking.NewClassifier(tracking.ClassifierOptions{}))
	rec := tracking.NewRecorder(sink, tracking.RecorderOptions{Log: log})
	h := tracking.NewHandlers(tracking.HandlersOptions{Signer: signer, Targets: targets, Recorder: rec, Sink: sink,
		Mirror: tracking.NewMirrorPages(db, profiles, links, targets), Log: log})
	return h, rec, links, sink, nil
}

// sendingSettings reads HERALD_DOMAIN_LIMITS, HERALD_DOMAIN_CONNS and HERALD_RETRY_BACKOFF, also
// in capture mode, so that a mistake shows before the first relay is configured. A nil
// schedule means the engine's default.
func sendingSettings(cfg *config.Config) (email.DomainLimits, []time.Duration, error) {
	var (
		limits  email.DomainLimits
		backoff []time.Duration
		err     error
	)
	if cfg.DomainLimits != "" {
		if limits, err = sending.ParseDomainLimits(cfg.DomainLimits); err != nil {
			return limits, nil, fmt.Errorf("HERALD_DOMAIN_LIMITS: %w", err)
		}
	}
	if cfg.DomainConns != "" {
		if err = sending.ParseDomainConns(cfg.DomainConns, &limits); err != nil {
			return limits, nil, fmt.Errorf("HERALD_DOMAIN_CONNS: %w", err)
		}
	}
	if cfg.RetryBackoff != "" {
		if backoff, err = sending.ParseBackoff(cfg.RetryBackoff); err != nil {
			return limits, nil, fmt.Errorf("HERALD_RETRY_BACKOFF: %w", err)
		}
	}
	return limits, backoff, nil
}

// startEngine starts the sending engine: over the relays of HERALD_SMTP_RELAYS, or in capture
// mode (messages kept in the database and listed at /api/v1/captured) when none is set.
func startEngine(ctx context.Context, db *store.DB, cfg *config.Config, clk clock.Clock, deliveries *delivery.Service,
	q *quarantine.Service, links *tracking.Links, log *slog.Logger) (*sending.Engine, channel.Sender, error) {
	limits, backoff, err := sendingSettings(cfg)
	if err != nil {
		return nil, nil, err
	}
	var sender channel.Sender
	if cfg.SMTPRelays != "" {
		relays, err := email.ParseRelays(cfg.SMTPRelays)
		if err != nil {
			return nil, nil, fmt.Errorf("HERALD_SMTP_RELAYS: %w", err)
		}
		t, err := email.New(email.Options{Relays: relays, Domains: limits, Logger: log})
		if err != nil {
			return nil, nil, fmt.Errorf("HERALD_SMTP_RELAYS: %w", err)
		}
		sender = t
		log.Info("sending through SMTP", "relays", len(relays), "capped_domains", len(limits.Rates),
			"other_domains_cap", limits.Default, "domains_with_conns_cap", len(limits.Conns), "other_domains_conns_cap", limits.DefaultConns)
	} else {
		sender = sending.NewCaptureSender(db, clk)
		log.Info("capture mode: no HERALD_SMTP_RELAYS, so messages are kept locally and listed at /api/v1/captured")
	}
	var rp *sending.ReturnPath
	if cfg.BounceDomain != "" {
		secret, err := db.Secret(ctx, "return_path.key", 32)
		if err != nil {
			return nil, nil, err
		}
		if rp, err = sending.NewReturnPath(cfg.BounceDomain, secret); err != nil {
			return nil, nil, fmt.Errorf("HERALD_BOUNCE_DOMAIN: %w", err)
		}
	}
	dkim, err := loadDKIM(cfg)
	if err != nil {
		return nil, nil, err
	}
	eng, err := sending.New(sending.Config{DB: db, Deliveries: deliveries, Quarantine: q, Sender: sender, Links: links,
		ReturnPath: rp, DKIM: dkim, NodeID: nodeID(cfg), Backoff: backoff, Clock: clk, Logger: log})
	if err != nil {
		return nil, nil, err
	}
	eng.Start(ctx)
	return eng, sender, nil
}

// messageIDDomain is the right-hand side of Message-IDs: the bounce domain when there is one,
// else the host of the public URL.
func messageIDDomain(cfg *config.Config) string {
	if cfg.BounceDomain != "" {
		return cfg.BounceDomain
	}
	if u, err := url.Parse(cfg.PublicURL); err == nil && u.Hostname() != "" {
		return u.Hostname()
	}
	return "localhost"
}

// startBounces builds what applies asynchronous bounces: the BounceApplier, the provider
// webhook handlers and, when HERALD_BOUNCE_ADDR is set, the inbound SMTP listener, serving
// until its Shutdown. HERALD_BOUNCE_SNS_TOPICS (comma-separated ARNs) names the SNS topics whose
// Amazon SES notifications are accepted.
func startBounces(ctx context.Context, db *store.DB, cfg *config.Config, clk clock.Clock, q *quarantine.Service,
	optOut func(ctx context.Context, logID, deliveryID int64) error, log *slog.Logger) (*web.BounceWebhooks, *bounce.Listener, error) {
	if cfg.BounceAddr != "" && cfg.BounceDomain == "" {
		return nil, nil, errors.New("HERALD_BOUNCE_ADDR is set but HERALD_BOUNCE_DOMAIN is not: the bounce listener needs the return-path domain it accepts mail for")
	}
	var rp *sending.ReturnPath
	if cfg.BounceDomain != "" {
		secret, err := db.Secret(ctx, "return_path.key", 32) // the engine's key: the same row of settings
		if err != nil {
			return nil, nil, err
		}
		if rp, err = sending.NewReturnPath(cfg.BounceDomain, secret); err != nil {
			return nil, nil, fmt.Errorf("HERALD_BOUNCE_DOMAIN: %w", err)
		}
	}
	applier, err := sending.NewBounceApplier(sending.BounceConfig{DB: db, Quarantine: q, ReturnPath: rp, OptOut: optOut, Clock: clk, Logger: log})
	if err != nil {
		return nil, nil, err
	}
	var topics []string
	for _, t := range strings.Split(os.Getenv("HERALD_BOUNCE_SNS_TOPICS"), ",") {
		if t = strings.TrimSpace(t); t != "" {
			topics = append(topics, t)
		}
	}
	hooks, err := web.NewBounceWebhooks(web.BounceWebhooksOptions{DB: db, Receiver: applier, SNSTopicARNs: topics, Clock: clk, Log: log})
	if err != nil {
		return nil, nil, err
	}
	if cfg.BounceAddr == "" {
		return hooks, nil, nil
	}
	ln, err := net.Listen("tcp", cfg.BounceAddr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen on %s (HERALD_BOUNCE_ADDR): %w", cfg.BounceAddr, err)
	}
	l := bounce.NewListener(cfg.BounceDomain, applier, log)
	go func() {
		if err := l.Serve(ln); err != nil {
			log.Error("bounce listener stopped", "err", err)
		}
	}()
	log.Info("bounce listener is listening", "addr", ln.Addr().String(), "domain", cfg.BounceDomain)
	return hooks, l, nil
}

// nodeID names this node in sending-log leases: HERALD_NODE_ID, else the host name and the
// listen address. The default is stable across restarts, so a restarted node takes back at
// once the rows its dead run held, and unique among live nodes of one host, since two
// processes cannot listen on one address.
func nodeID(cfg *config.Config) string {
	if id := os.Getenv("HERALD_NODE_ID"); id != "" {
		return id
	}
	host, _ := os.Hostname()
	return host + "/" + cfg.Addr
}

// loadDKIM reads the DKIM signing key when HERALD_DKIM_KEY_FILE names one.
func loadDKIM(cfg *config.Config) (*email.DKIM, error) {
	if cfg.DKIMKeyFile == "" {
		return nil, nil
	}
	pemBytes, err := os.ReadFile(cfg.DKIMKeyFile)
	if err != nil {
		return nil, fmt.Errorf("HERALD_DKIM_KEY_FILE: %w", err)
	}
	key, err := email.ParseDKIMKey(pemBytes)
	if err != nil {
		return nil, fmt.Errorf("HERALD_DKIM_KEY_FILE %s: %w", cfg.DKIMKeyFile, err)
	}
	return &email.DKIM{Domain: cfg.DKIMDomain, Selector: cfg.DKIMSelector, Key: key}, nil
}
