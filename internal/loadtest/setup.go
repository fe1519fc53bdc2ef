package loadtest

import (
	"context"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/coreos/fleet/schema"
	"github.com/fleetroll/fleetroll/internal/cluster"
)

// Service is the load test's my-service: the demo instances with their
// sidekicks, one instance per machine.
type Service struct {
	Ports     []string
	Units     []string
	Sidekicks []string
}

// LaunchOptions shape the instances.
type LaunchOptions struct {
	// DemoArgs are more flags of the demo service, e.g. "-warmup 2s".
	DemoArgs string
	// SidekickInterval and SidekickTTL: how often the sidekick announces,
	// and the announcement's TTL.
	SidekickInterval, SidekickTTL time.Duration
	// Shared lets several instances share a machine (no Conflicts=): more
	// instances than machines, or blue-green's new ones beside the old.
	Shared bool
}

// Launch submits my-service@PORT (the demo unit, never two on one machine)
// and its sidekick for each port, and waits until they run.
func Launch(ctx context.Context, cl *cluster.Cluster, ports []string, o LaunchOptions) (*Service, error) {
	demo, err := cluster.LoadTemplate(filepath.Join(cl.Repo, "contrib", "demo", "my-service@.service"),
		"STATE="+cl.Dir, "ARGS="+o.DemoArgs)
	if err != nil {
		return nil, err
	}
	if !o.Shared {
		demo = append(demo, &schema.UnitOption{Section: "X-Fleet", Name: "Conflicts", Value: "my-service@*.service"})
	}
	side, err := cluster.LoadTemplate(filepath.Join(cl.Repo, "units", "my-service-sidekick@.service"),
		"ETCD="+cl.EtcdURL, "CHECK_URL=http://127.0.0.1:%i/healthz",
		fmt.Sprintf("INTERVAL=%g", o.SidekickInterval.Seconds()), fmt.Sprintf("TTL=%g", o.SidekickTTL.Seconds()))
	if err != nil {
		return nil, err
	}
	s := &Service{Ports: ports}
	if s.Units, err = cl.Launch(ctx, "my-service", demo, ports...); err != nil {
		return s, err
	}
	if s.Sidekicks, err = cl.Launch(ctx, "my-service-sidekick", side, ports...); err != nil {
		return s, err
	}
	return s, nil
}

// Destroy removes the units (cleanup; errors ignored).
func (s *Service) Destroy(cl *cluster.Cluster) {
	cl.Destroy(append(append([]string{}, s.Sidekicks...), s.Units...)...)
}

// Proxy is nginx in front of the instances, in the hub namespace (the
// machines' addresses are reachable only there), with confd rendering its
// upstreams from etcd. Clients reach it on a unix socket.
type Proxy struct {
	Dir    string
	Socket string
	nginx  *exec.Cmd
	confd  *exec.Cmd
	files  []*os.File
}

// BuildConfd builds confd (contrib/proxy/build-confd.sh) into dir.
func BuildConfd(ctx context.Context, repo, dir string) (string, error) {
	out := filepath.Join(dir, "confd")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	cmd := exec.CommandContext(ctx, filepath.Join(repo, "contrib", "proxy", "build-confd.sh"), out)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build confd: %w\n%s", err, b)
	}
	return out, nil
}

// StartProxy copies the shipped prefix directory (contrib/proxy/
// my-service-proxy) to dir, makes it listen on dir/proxy.sock, and starts
// confd and nginx. It returns once a request through nginx succeeds.
func StartProxy(ctx context.Context, cl *cluster.Cluster, dir, confd string) (*Proxy, error) {
	src := filepath.Join(cl.Repo, "contrib", "proxy", "my-service-proxy")
	if err := copyDir(src, dir); err != nil {
		return nil, err
	}
	p := &Proxy{Dir: dir, Socket: filepath.Join(dir, "proxy.sock")}
	// listen.conf is the site's file to replace.
	if err := os.WriteFile(filepath.Join(dir, "listen.conf"), []byte("listen unix:"+p.Socket+";\n"), 0o644); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return nil, err
	}
	// nginx and confd outlive ctx's deadline: Close stops them.
	life := context.WithoutCancel(ctx)
	p.nginx = cl.Hub(life, "nginx", "-p", dir+"/", "-c", "nginx.conf", "-g", "daemon off;")
	if err := p.logTo(p.nginx, "nginx.log"); err != nil {
		return nil, err
	}
	if err := p.nginx.Start(); err != nil {
		return nil, fmt.Errorf("start nginx: %w", err)
	}
	// confd reloads nginx by its pid file, so it runs in the prefix dir.
	p.confd = exec.CommandContext(life, confd, "-watch", "-backend", "etcd", "-node", cl.EtcdURL, "-confdir", filepath.Join(dir, "confd"))
	p.confd.Dir = dir
	if err := p.logTo(p.confd, "confd.log"); err != nil {
		p.Close()
		return nil, err
	}
	if err := p.confd.Start(); err != nil {
		p.Close()
		return nil, fmt.Errorf("start confd: %w", err)
	}
	if err := p.waitServing(ctx); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

func (p *Proxy) logTo(cmd *exec.Cmd, name string) error {
	f, err := os.Create(filepath.Join(p.Dir, name))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = f, f
	p.files = append(p.files, f)
	return nil
}

// Upstreams is the upstream list confd rendered last.
func (p *Proxy) Upstreams() string {
	b, _ := os.ReadFile(filepath.Join(p.Dir, "upstreams", "my-service.conf"))
	return string(b)
}

// Count is the number of instances in the upstreams.
func (p *Proxy) Count() int { return strings.Count(p.Upstreams(), "max_fails") }

// WaitUpstreams waits until n instances are in the rendered upstreams.
func (p *Proxy) WaitUpstreams(ctx context.Context, n int) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if p.Count() == n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d upstreams: %w; now:\n%s", n, ctx.Err(), p.Upstreams())
		case <-tick.C:
		}
	}
}

func (p *Proxy) waitServing(ctx context.Context) error {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", p.Socket)
		}}}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		resp, err := c.Get("http://proxy/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("the proxy does not serve: %v (%w); see %s/nginx.log and confd.log", last, ctx.Err(), p.Dir)
		case <-tick.C:
		}
	}
}

// Close stops confd and nginx.
func (p *Proxy) Close() {
	for _, c := range []*exec.Cmd{p.confd, p.nginx} {
		if c == nil || c.Process == nil {
			continue
		}
		_ = c.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = c.Process.Kill()
			<-done
		}
	}
	for _, f := range p.files {
		f.Close()
	}
}

func copyDir(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		to := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(to, 0o755)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(to, b, 0o644)
	})
}
