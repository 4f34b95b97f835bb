// Package web is Herald's HTTP face: the /api/v1 JSON API, health and metrics, and later the
// server-rendered UI and tracking endpoints. Handlers decode requests, check the caller's role
// (declared beside each route in routes.go) and call domain services; they hold no business
// rules of their own, so the UI and the API share every state change.
package web

import (
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/heraldhq/herald/internal/audience"
	"github.com/heraldhq/herald/internal/auth"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/delivery"
	"github.com/heraldhq/herald/internal/profile"
	"github.com/heraldhq/herald/internal/quarantine"
	"github.com/heraldhq/herald/internal/stats"
	"github.com/heraldhq/herald/internal/store"
	"github.com/heraldhq/herald/internal/tracking"
	"github.com/heraldhq/herald/internal/webhook"
)

// Config is what the HTTP layer needs to know of Herald's settings.
type Config struct {
	// PublicURL is the base URL users reach Herald at; an https URL makes cookies Secure.
	PublicURL string
	// Version is shown by /healthz.
	Version string
	// MaxBodyBytes caps JSON request bodies (default 1 MiB).
	MaxBodyBytes int64
}

// Deps are the services the handlers call.
type Deps struct {
	DB     *store.DB
	Auth   *auth.Service
	Clock  clock.Clock
	Log    *slog.Logger
	Config Config

	Quarantine *quarantine.Service
	Profiles   *profile.Service
	Audiences  *audience.Service
	Deliveries *delivery.Service
	Webhooks   *webhook.Service
	Stats      *stats.Service
	// Tracking serves the /t/ endpoints; nil answers them 404.
	Tracking *tracking.Handlers
	// Links builds tracking URLs (the mirror page in a profile's history); nil leaves them out.
	Links *tracking.Links
	// Bounces serves the bounce webhook endpoints; nil answers them 404.
	Bounces *BounceWebhooks
	// Sending says why sending is held up (sending.Engine.Waiting), for a delivery's progress;
	// nil when this process runs no engine.
	Sending interface{ Waiting() string }
}

// Server routes HTTP requests to handlers.
type Server struct {
	Deps
	mux      *http.ServeMux
	registry *prometheus.Registry
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	routes   []route
}

// NewServer builds the handler tree.
func NewServer(d Deps) *Server {
	if d.Config.MaxBodyBytes == 0 {
		d.Config.MaxBodyBytes = 1 << 20
	}
	s := &Server{Deps: d, mux: http.NewServeMux(), registry: prometheus.NewRegistry()}
	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_http_requests_total", Help: "HTTP requests by route and status code.",
	}, []string{"route", "code"})
	s.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "herald_http_request_duration_seconds", Help: "HTTP request latency by route.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"route"})
	s.registry.MustRegister(s.requests, s.duration,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.routes = s.routeTable()
	for _, rt := range s.routes {
		s.mux.Handle(rt.method+" "+rt.pattern, s.wrap(rt))
	}
	s.mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, r, http.StatusNotFound, "not_found", "there is no API endpoint "+r.Method+" "+r.URL.Path+"; see /api/v1/openapi.json")
	})
	return s
}

// handleMetrics serves the Prometheus metrics.
func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{}).ServeHTTP(w, r)
}

// Registry is the Prometheus registry that /metrics serves, for other packages' collectors.
func (s *Server) Registry() *prometheus.Registry { return s.registry }

// Handler returns the root handler, with cross-origin write protection for browsers.
func (s *Server) Handler() http.Handler {
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, r, http.StatusForbidden, "cross_origin", "cross-origin requests that change data are refused")
	}))
	return cop.Handler(s.mux)
}

// statusRecorder remembers the status code a handler wrote, for metrics and logs.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Flush lets streaming handlers (Server-Sent Events) flush through the recorder.
func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap gives http.ResponseController the underlying writer.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// wrap adds, around a route's handler: panic recovery, metrics, the request log,
// authentication and the route's role check.
func (s *Server) wrap(rt route) http.Handler {
	label := rt.method + " " + rt.pattern
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				s.Log.Error("panic in handler", "route", label, "panic", p)
				if rec.status == 0 {
					writeProblem(rec, r, http.StatusInternalServerError, "internal", "an internal error occurred; it has been logged")
				}
			}
			code := rec.status
			if code == 0 {
				code = http.StatusOK
			}
			s.requests.WithLabelValues(label, itoa(code)).Inc()
			s.duration.WithLabelValues(label).Observe(time.Since(start).Seconds())
			if !strings.HasPrefix(rt.pattern, "/t/") {
				s.Log.Debug("request", "method", r.Method, "path", r.URL.Path, "status", code, "duration", time.Since(start))
			}
		}()
		if rt.access.public {
			rt.handler(rec, r, auth.Principal{IP: clientIP(r)})
			return
		}
		p, err := s.authenticate(r)
		if err != nil {
			s.fail(rec, r, err)
			return
		}
		if len(rt.access.roles) > 0 {
			if err := p.RequireAny(rt.access.roles...); err != nil {
				s.fail(rec, r, err)
				return
			}
		}
		rt.handler(rec, r, p)
	})
}

func itoa(n int) string {
	const digits = "0123456789"
	if n >= 100 && n < 1000 {
		return string([]byte{digits[n/100], digits[n/10%10], digits[n%10]})
	}
	return "other"
}
