package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/fleetroll/fleetroll/fleetroll/rollout"
	"github.com/fleetroll/fleetroll/hook"
	"github.com/urfave/cli/v2"
)

func serveCommand() *cli.Command {
	flags := append(fleetFlags(),
		configFlag("YAML file of services, their settings and triggers (reloaded on SIGHUP); the settings' flags given are every service's defaults"),
		&cli.StringFlag{Name: "check-config", Usage: "validate this configuration file and the secrets serve would read (never printed), then exit: 0 valid, 2 not"},
		&cli.StringFlag{Name: "service", EnvVars: []string{"FLEETROLL_SERVICE"}, Usage: "one service to roll, instead of --config"},
		&cli.StringFlag{Name: "repository", EnvVars: []string{"FLEETROLL_REPOSITORY"}, Usage: "with --service: the image repository (namespace/name) whose pushes roll it"},
		&cli.StringSliceFlag{Name: "tag", Value: cli.NewStringSlice("latest"), EnvVars: []string{"FLEETROLL_TAG"}, Usage: "with --service: tags (or globs) that roll it"},
		&cli.StringFlag{Name: "listen", Value: ":8080", EnvVars: []string{"FLEETROLL_LISTEN"}, Usage: "address to listen on"},
		&cli.StringFlag{Name: "tls-cert", EnvVars: []string{"FLEETROLL_TLS_CERT"}, Usage: "TLS certificate file (with --tls-key)"},
		&cli.StringFlag{Name: "tls-key", EnvVars: []string{"FLEETROLL_TLS_KEY"}, Usage: "TLS key file"},
		&cli.StringFlag{Name: "token-file", EnvVars: []string{"FLEETROLL_TOKEN_FILE"},
			Usage: "file holding the API's bearer token, for /rollouts only (or the token itself in $FLEETROLL_TOKEN)"},
		&cli.StringFlag{Name: "dockerhub-token-file", EnvVars: []string{"FLEETROLL_DOCKERHUB_TOKEN_FILE"}, Usage: "file holding the token in the Docker Hub webhook URL (or $FLEETROLL_DOCKERHUB_TOKEN); without it the Docker Hub endpoint is off"},
		&cli.StringFlag{Name: "registry-token-file", EnvVars: []string{"FLEETROLL_REGISTRY_TOKEN_FILE"}, Usage: "file holding the registry's bearer token (or $FLEETROLL_REGISTRY_TOKEN); without it the registry endpoint is off"},
		&cli.StringFlag{Name: "github-secret-file", EnvVars: []string{"FLEETROLL_GITHUB_SECRET_FILE"}, Usage: "file holding the GitHub webhook secret (or $FLEETROLL_GITHUB_SECRET); without it the GitHub endpoint is off"},
		&cli.StringSliceFlag{Name: "callback-allow", Value: cli.NewStringSlice(hook.DefaultCallbackAllow), EnvVars: []string{"FLEETROLL_CALLBACK_ALLOW"},
			Usage: "origins (scheme://host[:port]) Docker Hub callbacks may go to (the notifications have --notify-allow)"},
		&cli.StringSliceFlag{Name: "notify-allow", Value: cli.NewStringSlice(hook.DefaultNotifyAllow), EnvVars: []string{"FLEETROLL_NOTIFY_ALLOW"},
			Usage: "origins (scheme://host[:port]) the notifications' URLs may be on (apart from --callback-allow)"},
		&cli.StringFlag{Name: "notify-secrets-dir", EnvVars: []string{"FLEETROLL_NOTIFY_SECRETS_DIR"},
			Usage: "directory of the notifications' secrets: NAME.url and, for a webhook, NAME.key (or $FLEETROLL_NOTIFY_NAME_URL and _KEY); their origins must be on --notify-allow"},
		&cli.DurationFlag{Name: "callback-timeout", Value: 10 * time.Second, EnvVars: []string{"FLEETROLL_CALLBACK_TIMEOUT"}, Usage: "timeout of each callback request"},
		&cli.DurationFlag{Name: "callback-deadline", Value: hook.DefaultCallbackDeadline, EnvVars: []string{"FLEETROLL_CALLBACK_DEADLINE"}, Usage: "all the callbacks of one rollout, retries included, within this"},
		&cli.DurationFlag{Name: "callback-shutdown-timeout", Value: 10 * time.Second, EnvVars: []string{"FLEETROLL_CALLBACK_SHUTDOWN_TIMEOUT"}, Usage: "at shutdown, wait this long for callbacks still queued"},
		&cli.StringSliceFlag{Name: "view-from", EnvVars: []string{"FLEETROLL_VIEW_FROM"}, Usage: "CIDRs that see the status page read-only without logging in (default: none)"},
		&cli.StringSliceFlag{Name: "allow-from", EnvVars: []string{"FLEETROLL_ALLOW_FROM"}, Usage: "CIDRs allowed to call (default: any)"},
		&cli.StringSliceFlag{Name: "trusted-proxies", EnvVars: []string{"FLEETROLL_TRUSTED_PROXIES"}, Usage: "CIDRs of proxies whose X-Forwarded-For is believed"},
		&cli.Int64Flag{Name: "max-body", Value: hook.DefaultBodyLimit, EnvVars: []string{"FLEETROLL_MAX_BODY"}, Usage: "largest request body, in bytes"},
		&cli.IntFlag{Name: "max-parallel", Value: 2, EnvVars: []string{"FLEETROLL_MAX_PARALLEL"}, Usage: "rollouts of different services at once"},
		&cli.DurationFlag{Name: "quiet-period", Value: 2 * time.Second, EnvVars: []string{"FLEETROLL_QUIET_PERIOD"}, Usage: "a queued rollout starts once no trigger touched it for this long"},
		&cli.DurationFlag{Name: "max-wait", Value: hook.DefaultMaxWait, EnvVars: []string{"FLEETROLL_MAX_WAIT"}, Usage: "...or at the latest this long after its first trigger, however often triggers keep coming"},
		&cli.DurationFlag{Name: "replay-window", Value: hook.DefaultReplayWindow, EnvVars: []string{"FLEETROLL_REPLAY_WINDOW"}, Usage: "a delivery received again within this answers \"duplicate\" and starts nothing"},
		&cli.StringFlag{Name: "metrics-listen", EnvVars: []string{"FLEETROLL_METRICS_LISTEN"}, Usage: "serve /metrics and /healthz on this address instead of --listen (keeps them off a public listener; without it, /metrics on --listen takes the API token)"},
		&cli.DurationFlag{Name: "shutdown-timeout", Value: 6 * time.Minute, EnvVars: []string{"FLEETROLL_SHUTDOWN_TIMEOUT"}, Usage: "how long SIGTERM waits for the running unit step"},
		&cli.StringFlag{Name: "public-url", EnvVars: []string{"FLEETROLL_PUBLIC_URL"}, Usage: "base URL of the links handed out (https://hooks.example.com): status_url (the API's /rollouts/ID) and, for people, the status page on a rollout (/ui/rollouts/ID: Slack messages, Docker Hub's target_url); the status page answers to its host, and https makes its cookie Secure"},
		&cli.IntFlag{Name: "history", Value: 200, EnvVars: []string{"FLEETROLL_HISTORY"}, Usage: "finished rollouts kept for GET /rollouts"},
	)
	flags = append(flags, settingsFlags()...)
	flags = append(flags, registryFlags()...)
	flags = append(flags, etcdFlags()...)
	flags = append(flags, logFlags("info")...)
	return &cli.Command{
		Name:  "serve",
		Usage: "receive webhooks (Docker Hub, registry, GitHub, CI) and roll services",
		Description: `Answers at once, runs rollouts in the background, one per service at a time,
coalescing bursts, and reports back to Docker Hub.

Examples:
   fleetroll serve --service my-service --ports 8901-8903 --repository demo/my-service --token-file /etc/fleetroll/token
   fleetroll serve --config /etc/fleetroll/config.yaml --token-file /etc/fleetroll/token --public-url https://hooks.example.com

Endpoints: POST /webhooks/dockerhub/{token}, POST /webhooks/registry, POST /webhooks/github
(each only with its own secret); with the API token: POST /rollouts, GET /rollouts,
GET /rollouts/{id}, POST /rollouts/{id}/cancel, POST /rollouts/{id}/promote,
POST /rollouts/{id}/abort, GET /events (Server-Sent Events); the status page at /
(a login with the API token); GET /healthz, GET /livez and GET /metrics (on
--metrics-listen when set; on --listen, /metrics takes the API token).
--check-config FILE validates FILE and the secrets it names, then exits (0 or 2).
SIGHUP reloads --config and the secrets' files (a reload that fails keeps
what is in force); SIGTERM stops taking work, lets the running unit step finish and exits 0.`,
		Flags:        flags,
		Action:       serveAction,
		OnUsageError: onUsageError,
	}
}

// serveOptions is everything serve needs, validated before it listens.
type serveOptions struct {
	base            rollout.Settings // the defaults and the settings' flags given
	endpoint        string
	requestTimeout  time.Duration
	configFile      string
	check           bool // --check-config: validate, then exit
	config          *hook.Config
	hook            hook.Options
	listen          string
	metricsListen   string
	callbackDrain   time.Duration
	tlsCert, tlsKey string
	shutdownTimeout time.Duration
	readSecrets     func() (hook.Secrets, error) // from the files (or variables) named, at start and at each SIGHUP
	timeouts        httpTimeouts                 // zero: defaultHTTPTimeouts
}

func serveOptionsFrom(c *cli.Context) (*serveOptions, error) {
	if c.NArg() > 0 {
		return nil, usageErr("serve takes no arguments (got %q)", c.Args().First())
	}
	o := &serveOptions{
		endpoint:        c.String("endpoint"),
		requestTimeout:  c.Duration("request-timeout"),
		configFile:      c.String("config"),
		check:           c.String("check-config") != "",
		listen:          c.String("listen"),
		metricsListen:   c.String("metrics-listen"),
		callbackDrain:   c.Duration("callback-shutdown-timeout"),
		tlsCert:         c.String("tls-cert"),
		tlsKey:          c.String("tls-key"),
		shutdownTimeout: c.Duration("shutdown-timeout"),
	}
	if o.check {
		if o.configFile != "" && o.configFile != c.String("check-config") {
			return nil, usageErr("serve: --check-config FILE checks FILE: give it or --config, not both")
		}
		o.configFile = c.String("check-config")
	}
	o.base = rollout.Defaults()
	if err := applyFlags(c, &o.base); err != nil {
		return nil, err
	}
	var err error
	o.hook = hook.Options{
		LeaseTTL:         o.base.LockTTL,
		BodyLimit:        c.Int64("max-body"),
		MaxParallel:      c.Int("max-parallel"),
		QuietPeriod:      c.Duration("quiet-period"),
		MaxWait:          c.Duration("max-wait"),
		ReplayWindow:     c.Duration("replay-window"),
		CallbackDeadline: c.Duration("callback-deadline"),
		History:          c.Int("history"),
		PublicURL:        strings.TrimSuffix(c.String("public-url"), "/"),
		ListenAddr:       c.String("listen"),
		SeparateOps:      c.String("metrics-listen") != "",
		Build:            hook.BuildInfo{Version: thisBuild().Version, Revision: thisBuild().Revision, GoVersion: thisBuild().Go},
	}
	switch {
	case o.configFile != "" && c.String("service") != "":
		return nil, usageErr("serve: give --config or --service, not both")
	case o.configFile != "":
		if c.IsSet("ports") || c.IsSet("repository") || c.IsSet("tag") || c.IsSet("image") || c.IsSet("spare-ports") {
			return nil, usageErr("serve: --ports, --spare-ports, --repository, --tag and --image go with --service; put them in the --config file")
		}
		if o.config, err = hook.LoadConfig(o.configFile, o.base); err != nil {
			return nil, usageErr("%w", err)
		}
	case c.String("service") != "":
		if o.config, err = flagConfig(c, o.base); err != nil {
			return nil, err
		}
	default:
		return nil, usageErr("serve: give --config FILE or --service NAME")
	}

	files := map[string]string{}
	for _, flag := range []string{"token-file", "dockerhub-token-file", "registry-token-file", "github-secret-file"} {
		files[flag] = c.String(flag)
	}
	o.readSecrets = func() (hook.Secrets, error) { return readSecrets(files) }
	if o.hook.Secrets, err = o.readSecrets(); err != nil { // hook.New validates them (exit 2)
		return nil, err
	}

	o.hook.NotifySecret = notifySecrets(c.String("notify-secrets-dir"))
	if o.hook.Callbacks, err = hook.NewCallbacker(c.StringSlice("callback-allow"), c.Duration("callback-timeout")); err != nil {
		return nil, usageErr("--callback-allow: %w", err)
	}
	if err = o.hook.Callbacks.AllowNotify(c.StringSlice("notify-allow")...); err != nil {
		return nil, usageErr("--notify-allow: %w", err)
	}
	if o.hook.AllowFrom, err = parsePrefixes(c.StringSlice("allow-from")); err != nil {
		return nil, usageErr("--allow-from: %w", err)
	}
	if o.hook.ViewFrom, err = parsePrefixes(c.StringSlice("view-from")); err != nil {
		return nil, usageErr("--view-from: %w", err)
	}
	if o.hook.TrustedProxies, err = parsePrefixes(c.StringSlice("trusted-proxies")); err != nil {
		return nil, usageErr("--trusted-proxies: %w", err)
	}
	return o, o.validate()
}

func (o *serveOptions) validate() error {
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return usageErr("serve: --tls-cert and --tls-key go together")
	}
	for name, d := range map[string]time.Duration{"--request-timeout": o.requestTimeout, "--shutdown-timeout": o.shutdownTimeout} {
		if d <= 0 {
			return usageErr("%s must be positive, got %s", name, d)
		}
	}
	if o.hook.BodyLimit <= 0 || o.hook.MaxParallel <= 0 || o.hook.History <= 0 {
		return usageErr("serve: --max-body, --max-parallel and --history must be positive")
	}
	if o.hook.QuietPeriod < 0 || o.hook.MaxWait < 0 || o.hook.ReplayWindow < 0 || o.callbackDrain < 0 {
		return usageErr("serve: --quiet-period, --max-wait, --replay-window and --callback-shutdown-timeout must not be negative")
	}
	return nil
}

// flagConfig builds the one-service configuration of --service: the
// settings of the flags, and triggers of --repository and --tag.
func flagConfig(c *cli.Context, base rollout.Settings) (*hook.Config, error) {
	svc := hook.Service{Name: c.String("service"), Settings: base.Clone()}
	if repo := c.String("repository"); repo != "" {
		t := hook.Trigger{Repository: repo, Tags: c.StringSlice("tag")}
		svc.DockerHub, svc.Registry, svc.GitHub = []hook.Trigger{t}, []hook.Trigger{t}, []hook.Trigger{t}
	}
	cfg := &hook.Config{Services: []hook.Service{svc}}
	if err := cfg.Validate(); err != nil {
		return nil, usageErr("serve --service/--repository/--tag: %w", err)
	}
	return cfg, nil
}

// readSecrets reads the API token and the senders' secrets from the files
// of the flags (flag name to file) or, for a flag not given, from its
// variable.
func readSecrets(files map[string]string) (hook.Secrets, error) {
	sec := hook.Secrets{}
	for _, s := range []struct {
		dst        *string
		flag, env  string
		isRequired bool
	}{
		{&sec.API, "token-file", "FLEETROLL_TOKEN", true},
		{&sec.DockerHub, "dockerhub-token-file", "FLEETROLL_DOCKERHUB_TOKEN", false},
		{&sec.Registry, "registry-token-file", "FLEETROLL_REGISTRY_TOKEN", false},
		{&sec.GitHub, "github-secret-file", "FLEETROLL_GITHUB_SECRET", false},
	} {
		var err error
		if *s.dst, err = readSecret(files[s.flag], s.flag, s.env); err != nil {
			return sec, err
		}
		if s.isRequired && *s.dst == "" {
			return sec, usageErr("serve: a token is required: --token-file FILE or $%s", s.env)
		}
	}
	return sec, nil
}

// readSecret reads a secret from a file (trailing newline trimmed) or, when
// no file is given, from an environment variable. Secrets never come from
// flags' values, which show in process lists.
func readSecret(file, flag, env string) (string, error) {
	if file == "" {
		return strings.TrimSpace(os.Getenv(env)), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", usageErr("--%s: %w", flag, err)
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", usageErr("--%s: %s is empty", flag, file)
	}
	return v, nil
}

func parsePrefixes(ss []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range ss {
		for _, part := range strings.Split(s, ",") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			if !strings.Contains(part, "/") {
				a, err := netip.ParseAddr(part)
				if err != nil {
					return nil, err
				}
				out = append(out, netip.PrefixFrom(a, a.BitLen()))
				continue
			}
			p, err := netip.ParsePrefix(part)
			if err != nil {
				return nil, err
			}
			out = append(out, p.Masked())
		}
	}
	return out, nil
}

func serveAction(c *cli.Context) error {
	o, err := serveOptionsFrom(c)
	if err != nil {
		return err
	}
	if o.check {
		return checkConfig(c, o)
	}
	logger, fleet, err := connect(c, o.endpoint, o.requestTimeout)
	if err != nil {
		return err
	}
	o.hook.Fleet, o.hook.Config, o.hook.Logger = fleet, o.config, logger
	if err := o.hook.Secrets.Validate(); err != nil {
		return usageErr("serve: hook: %w", err) // before fleet and etcd are asked anything
	}
	kapi, noEtcd, err := etcdFor(c.Context, c, fleet)
	if err != nil {
		return err
	}
	o.hook.Etcd, o.hook.Owner = kapi, rollout.Owner("fleetroll serve")
	if o.hook.Resolver, err = registryFrom(c); err != nil {
		return err
	}
	srv, err := hook.New(o.hook)
	if err != nil {
		return usageErr("serve: %w", err)
	}
	if kapi != nil {
		logger.Info("rollout queue in etcd: durable, shared with the other receivers; each rollout takes its service's lock and writes its intent",
			"etcd", c.String("etcd-endpoints"))
	} else {
		logger.Warn("rollout queue in memory: without etcd, a trigger accepted is lost if this receiver dies, and rollouts take no lock (--etcd-endpoints)",
			"why", noEtcd)
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return &exitError{exitFailed, fmt.Errorf("listen: %w", err)}
	}
	// A sender cannot make the receiver hold more connections than this
	// (a trusted proxy, which carries many clients, is held to the total).
	ln = hook.LimitListener(ln, hook.DefaultMaxConns, hook.DefaultMaxConnsPerClient, o.hook.TrustedProxies)
	var ops net.Listener
	if o.metricsListen != "" {
		if ops, err = net.Listen("tcp", o.metricsListen); err != nil {
			ln.Close()
			return &exitError{exitFailed, fmt.Errorf("listen on --metrics-listen: %w", err)}
		}
	}
	return runServer(c.Context, o, srv, ln, ops, logger)
}

// httpTimeouts bound each connection of serve's listeners.
type httpTimeouts struct{ readHeader, read, write, idle time.Duration }

// defaultHTTPTimeouts are serve's, on both listeners: a slow client is cut
// off, and an idle keep-alive connection closed. An event stream
// (/events) outlives them: net/http lifts the read deadline once a request
// is read (TestEventStreamOutlivesTheReadTimeout), and the stream gives
// each write a deadline of its own.
var defaultHTTPTimeouts = httpTimeouts{readHeader: 10 * time.Second, read: 30 * time.Second, write: 30 * time.Second, idle: 2 * time.Minute}

// newHTTPServer is the server of one of serve's listeners.
func newHTTPServer(h http.Handler, t httpTimeouts, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: t.readHeader,
		ReadTimeout:       t.read,
		WriteTimeout:      t.write,
		IdleTimeout:       t.idle,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
}

// runServer serves until ctx is done (SIGINT, SIGTERM) or the listener
// fails, reloading the configuration and the secrets on SIGHUP.
func runServer(ctx context.Context, o *serveOptions, srv *hook.Server, ln, opsLn net.Listener, logger *slog.Logger) error {
	timeouts := o.timeouts
	if timeouts == (httpTimeouts{}) {
		timeouts = defaultHTTPTimeouts
	}
	httpSrv := newHTTPServer(srv.Handler(), timeouts, logger)
	// Event streams end when the server shuts down: they must not hold up
	// its graceful shutdown.
	httpSrv.RegisterOnShutdown(srv.CloseStreams)
	// The queue outlives ctx: it is stopped on purpose, after the listener.
	queueCtx, stopQueue := context.WithCancel(context.WithoutCancel(ctx))
	defer stopQueue()
	queueDone := make(chan struct{})
	go func() {
		defer close(queueDone)
		srv.Run(queueCtx, o.callbackDrain)
	}()
	var opsSrv *http.Server
	if opsLn != nil {
		opsSrv = newHTTPServer(srv.OpsHandler(), timeouts, logger)
		go func() { _ = opsSrv.Serve(opsLn) }()
		logger.Info("metrics and health listening", "addr", opsLn.Addr().String())
	}
	served := make(chan error, 1)
	go func() {
		if o.tlsCert != "" {
			served <- httpSrv.ServeTLS(ln, o.tlsCert, o.tlsKey)
		} else {
			served <- httpSrv.Serve(ln)
		}
	}()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	logger.Info("listening", "addr", ln.Addr().String(), "tls", o.tlsCert != "", "services", len(srv.Config().Services), "fleet", o.endpoint)

	var serveErr error
loop:
	for {
		select {
		case <-hup:
			reload(o, srv, logger)
		case serveErr = <-served:
			break loop
		case <-ctx.Done():
			break loop
		}
	}

	logger.Info("shutting down: no new requests; the running unit step finishes", "timeout", o.shutdownTimeout.String())
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.shutdownTimeout)
	defer cancel()
	if err := httpSrv.Shutdown(sctx); err != nil {
		logger.Warn("closing connections", "error", err.Error())
	}
	if opsSrv != nil {
		_ = opsSrv.Shutdown(sctx)
	}
	stopQueue()
	select {
	case <-queueDone:
	case <-sctx.Done():
		return &exitError{exitFailed, fmt.Errorf("shutdown timed out after %s with a rollout still bringing a unit back up; its target state is launched", o.shutdownTimeout)}
	}
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return &exitError{exitFailed, fmt.Errorf("serve: %w", serveErr)}
	}
	logger.Info("stopped")
	return nil
}

// checkConfig is serve --check-config: what serve checks before it asks
// fleet or etcd anything, said in one line; what needs etcd is noted (serve
// finds etcd as it starts). Exit 0, or 2 with the first error.
func checkConfig(c *cli.Context, o *serveOptions) error {
	o.hook.Config = o.config
	res, err := hook.Check(o.hook)
	if err != nil {
		return usageErr("serve --check-config %s: %w", o.configFile, err)
	}
	fmt.Fprintf(c.App.Writer, "%s: valid: %d service(s), %d notification(s); the secrets are set\n", o.configFile, res.Services, res.Notifications)
	if len(res.NeedsEtcd) > 0 {
		fmt.Fprintf(c.App.Writer, "needs etcd (serve must find it as it starts): %s\n", strings.Join(res.NeedsEtcd, "; "))
	}
	return nil
}

// reload is SIGHUP: the secrets' files, then --config (which reads the
// notifications' secrets again). Each that fails keeps what is in force and
// says why.
func reload(o *serveOptions, srv *hook.Server, logger *slog.Logger) {
	if o.readSecrets != nil {
		sec, err := o.readSecrets()
		if err == nil {
			err = srv.SetSecrets(sec)
		}
		if err != nil {
			logger.Error("secrets reload failed; keeping the secrets in force", "error", err.Error())
		} else {
			logger.Info("secrets reloaded")
		}
	}
	if o.configFile == "" {
		return
	}
	cfg, err := hook.LoadConfig(o.configFile, o.base)
	if err == nil {
		err = srv.SetConfig(cfg)
	}
	if err != nil {
		logger.Error("config reload failed; keeping the configuration in force", "error", err.Error())
		return
	}
	logger.Info("config reloaded", "file", o.configFile, "services", len(cfg.Services))
}

// notifySecrets reads a notification's URL and key: from dir/NAME.url and
// dir/NAME.key, or without a directory from $FLEETROLL_NOTIFY_NAME_URL and
// $FLEETROLL_NOTIFY_NAME_KEY (NAME upper-cased, - as _).
func notifySecrets(dir string) func(name string) (hook.NotifySecret, error) {
	return func(name string) (hook.NotifySecret, error) {
		var sec hook.NotifySecret
		env := "FLEETROLL_NOTIFY_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
		for _, f := range []struct {
			dst  *string
			ext  string
			must bool
		}{{&sec.URL, "url", true}, {&sec.Key, "key", false}} {
			if dir == "" {
				*f.dst = strings.TrimSpace(os.Getenv(env + "_" + strings.ToUpper(f.ext)))
				continue
			}
			b, err := os.ReadFile(filepath.Join(dir, name+"."+f.ext))
			switch {
			case err == nil:
				*f.dst = strings.TrimSpace(string(b))
			case errors.Is(err, fs.ErrNotExist) && !f.must:
			default:
				return sec, fmt.Errorf("notification secret: %w", err)
			}
		}
		return sec, nil
	}
}
