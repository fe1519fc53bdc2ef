// Command detect measures how soon a crashing release is seen and rolled
// back (issue 23): on a local cluster of one machine and on one of three,
// each of its own, a service of three instances of the shipped unit
// (units/my-service@.service) run through the engine stand-in
// (contrib/cluster/engine.sh) is deployed a good release, then a release
// whose instances exit with status 1 N after their start, with fleetroll
// deploy --on-failure rollback and a minimum healthy time.
//
// For each round it prints, from the first crash (the time the crashing
// process wrote in its own last line, "crashing on purpose ... at T", which
// a drop-in sends to a file per instance): the rollout's halt (the failed
// unit's watch phase end in the record), every instance back on the
// previous release (fleet reports the failed unit running again, its
// rollback's start phase end; the other instances never stopped), the
// rollout's end (the record's finish: the instance rolled back is watched
// for the minimum healthy time too), and how many instances ever ran the
// bad release (the engine's log of runs). It checks that each instance's
// last run is the good release and that systemd has it running.
//
// It exits 1 when a goal is missed (each goal is printed with its figure).
//
//	bench/detect.sh [-machines 1,3] [-after 3s,15s] [-min-healthy-time 20s] [-keep]
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/coreos/fleet/schema"
	"github.com/fleetroll/fleetroll/fleetroll"
	"github.com/fleetroll/fleetroll/internal/cluster"
)

const (
	service = "bench-detect"
	// repository is the service's image repository: the engine stand-in
	// runs any REPOSITORY@sha256:HEX without a registry.
	repository = "127.0.0.1:5999/bench/detect"
	// crashMark starts the demo service's last line when -exit-after ends it.
	crashMark = "crashing on purpose (-exit-after "
)

var ports = []string{"19691", "19692", "19693"}

// A cluster of its own per size: its directory and ports.
type site struct {
	machines        int
	dir             string
	etcdPort, fleet int
}

var sites = map[int]site{
	1: {1, "/tmp/fleetroll-bench-detect1", 25379, 49223},
	3: {3, "/tmp/fleetroll-bench-detect3", 25389, 49233},
}

// goals of issue 23.
const (
	goalDetect  = 5 * time.Second
	goalBack    = 30 * time.Second
	goalBadRuns = 1
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	repo := flag.String("repo", ".", "the repository root")
	machinesFlag := flag.String("machines", "1,3", "cluster sizes, comma-separated (1 and 3)")
	afterFlag := flag.String("after", "3s,15s", "how long after its start each bad release's instance crashes, comma-separated")
	minHealthy := flag.Duration("min-healthy-time", 20*time.Second, "the deploy's --min-healthy-time")
	keep := flag.Bool("keep", false, "leave the clusters running")
	flag.Parse()
	var sizes []int
	for _, f := range strings.Split(*machinesFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if _, ok := sites[n]; err != nil || !ok {
			return fmt.Errorf("-machines %q: want 1 and/or 3", *machinesFlag)
		}
		sizes = append(sizes, n)
	}
	var afters []time.Duration
	for _, f := range strings.Split(*afterFlag, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(f))
		if err != nil || d <= 0 {
			return fmt.Errorf("-after %q: want positive durations, comma-separated", *afterFlag)
		}
		afters = append(afters, d)
	}
	abs, err := filepath.Abs(*repo)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	// fleetroll, built once before any cluster: the tree may change under a
	// long run.
	binDir, err := os.MkdirTemp("", "fleetroll-bench-detect")
	if err != nil {
		return err
	}
	defer os.RemoveAll(binDir)
	bin := filepath.Join(binDir, "fleetroll")
	if err := cluster.BuildFleetroll(ctx, abs, bin); err != nil {
		return err
	}

	fmt.Printf("detection and recovery of a crashing release (issue 23)\n")
	fmt.Printf("settings: 3 instances of the shipped unit (units/my-service@.service, one per machine on three) run by contrib/cluster/engine.sh;\n")
	fmt.Printf("  the good release deployed with --grace 0s --min-healthy-time 0s; then the bad one (its instances exit 1 N after their start) with\n")
	fmt.Printf("  fleetroll deploy --on-failure rollback --min-healthy-time %s -o json, grace at its default (%s), poll interval at its default (%s),\n",
		*minHealthy, fleetroll.DefaultGrace, fleetroll.DefaultPollInterval)
	fmt.Printf("  no --watch, no health gate, pre-pull on, one instance at a time\n")
	fmt.Printf("  crash: the time the crashing process wrote in its last line; halt: the failed unit's watch phase end (record);\n")
	fmt.Printf("  back: fleet reports the failed unit running on the previous release (its rollback's start end, record); end: the record's finish\n\n")
	fmt.Printf("%-8s %5s %11s %11s %10s %9s %8s  %s\n", "machines", "N", "start→crash", "crash→halt", "crash→back", "crash→end", "ran bad", "status / checks")

	var rows []row
	for _, m := range sizes {
		b, err := up(ctx, abs, bin, sites[m])
		if err == nil {
			var rs []row
			rs, err = b.rounds(ctx, afters, *minHealthy)
			rows = append(rows, rs...)
		}
		if b != nil && !*keep {
			if derr := b.c.Down(context.WithoutCancel(ctx)); derr != nil && err == nil {
				err = derr
			}
		}
		if err != nil {
			return err
		}
	}

	fmt.Println()
	failed := 0
	for _, r := range rows {
		tag := fmt.Sprintf("%d machine(s), N=%s", r.machines, r.after)
		for _, g := range []struct {
			name string
			ok   bool
			got  string
		}{
			{fmt.Sprintf("the crash seen within %s of happening", goalDetect), r.measured && r.halt-r.crash <= goalDetect, secs(r.halt - r.crash)},
			{fmt.Sprintf("every instance back on the old release within %s of the first crash", goalBack), r.measured && r.back-r.crash <= goalBack,
				fmt.Sprintf("%s (the rollout ended at %s)", secs(r.back-r.crash), secs(r.end-r.crash))},
			{"only the first instance ever ran the bad release", r.badRan == goalBadRuns && r.firstOnly, fmt.Sprintf("%d instance(s)", r.badRan)},
			{"the record, the engine's runs and systemd agree (rolled back, others untouched and not restarted, all on the good release)",
				r.checks == "", map[bool]string{true: "all held", false: r.checks}[r.checks == ""]},
		} {
			mark := "PASS"
			if !g.ok {
				mark, failed = "FAIL", failed+1
			}
			fmt.Printf("  %s %s: %s: %s\n", mark, tag, g.name, g.got)
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d goal(s) missed", failed)
	}
	return nil
}

// row is one round's figures, each an offset from the bad instance's start
// (the engine's run), so that differences are the figures printed.
type row struct {
	machines  int
	after     time.Duration
	crash     time.Duration // the first crash
	halt      time.Duration // the failed unit's watch ended
	back      time.Duration // fleet reports it running on the previous release
	end       time.Duration // the rollout's finish
	badRan    int           // instances that ever ran the bad release
	firstOnly bool          // the one that ran it is the plan's first
	status    fleetroll.Status
	measured  bool   // every time was found
	why       string // the failed unit's error in the record
	checks    string // what the cross-checks found wrong; empty when all held
}

func secs(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

type bench struct {
	c        *cluster.Cluster
	repo     string
	bin      string // fleetroll
	engine   string // the engine's directory: args/, runs
	errDir   string // each instance's stderr, DIR/stderr/PORT.log
	units    []string
	good     string // the good release
	machines int
}

// up starts the site's cluster afresh, the drop-ins that run the shipped
// unit and the pre-pull through the engine, and the three instances. Once
// its cluster is up, it returns the bench with it, even with an error.
func up(ctx context.Context, repo, bin string, s site) (*bench, error) {
	c, err := cluster.Up(ctx, cluster.Config{Repo: repo, Dir: s.dir, EtcdPort: s.etcdPort, FleetPort: s.fleet, Machines: s.machines, Fresh: true})
	if err != nil {
		return nil, err
	}
	b := &bench{c: c, repo: repo, bin: bin, engine: filepath.Join(s.dir, "engine"),
		errDir: filepath.Join(s.dir, "stderr"), machines: s.machines, good: repository + "@sha256:" + digest("good")}
	return b, b.setup(ctx, s)
}

// setup writes the drop-ins, launches the instances and deploys the good
// release.
func (b *bench) setup(ctx context.Context, s site) error {
	c, repo := b.c, b.repo
	for _, d := range []string{filepath.Join(b.engine, "args"), b.errDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	engine := map[string]string{"DOCKER": filepath.Join(repo, "contrib", "cluster", "engine.sh"), "ENGINE_DIR": b.engine, "STATE": s.dir, "ETCD": c.EtcdURL}
	for i := 1; i <= s.machines; i++ {
		m := s.dir
		if s.machines > 1 {
			m = filepath.Join(s.dir, fmt.Sprintf("m%d", i))
		}
		inst := map[string]string{"IMAGE": repository + ":v0", "RUNDIR": filepath.Join(m, "run-"+service), "NAME": service,
			"RELEASE_KEY": "/fleetroll/releases/" + service + "/current"}
		for k, v := range engine {
			inst[k] = v
		}
		// The crashing process's last line, with its time, in a file.
		if err := dropIn(m, service+"@.service", inst, "StandardError=append:"+filepath.Join(b.errDir, "%i.log")); err != nil {
			return err
		}
		if err := dropIn(m, "fleetroll-pull@.service", engine); err != nil {
			return err
		}
	}
	opts, err := cluster.LoadTemplate(filepath.Join(repo, "units", "my-service@.service"))
	if err != nil {
		return err
	}
	// One instance per machine on three (the unit's Conflicts=, renamed for
	// this service); on one machine, none.
	var kept []*schema.UnitOption
	for _, o := range opts {
		if o.Section == "X-Fleet" && o.Name == "Conflicts" {
			if s.machines == 1 {
				continue
			}
			o.Value = service + "@*.service"
		}
		kept = append(kept, o)
	}
	if b.units, err = c.Launch(ctx, service, kept, ports...); err != nil {
		return err
	}
	if s.machines > 1 {
		st, err := c.SystemdAll(ctx, b.units...)
		if err != nil {
			return err
		}
		seen := map[int]bool{}
		for _, x := range st {
			seen[x.Machine] = true
		}
		if len(seen) != s.machines {
			return fmt.Errorf("the instances are not one per machine: %+v", st)
		}
	}
	rep, err := b.deploy(ctx, b.good, "--grace", "0s", "--min-healthy-time", "0s")
	if err != nil {
		return err
	}
	if rep.Status != fleetroll.StatusSucceeded {
		return fmt.Errorf("deploy of the good release: %s: %s", rep.Status, rep.Error)
	}
	return nil
}

// dropIn writes a drop-in of environment variables and extra lines for a
// unit under machine directory m.
func dropIn(m, unit string, env map[string]string, extra ...string) error {
	var sb strings.Builder
	sb.WriteString("[Service]\n")
	for k, v := range env {
		fmt.Fprintf(&sb, "Environment=\"%s=%s\"\n", k, v)
	}
	for _, l := range extra {
		sb.WriteString(l + "\n")
	}
	d := filepath.Join(m, "run", "systemd", "user", unit+".d")
	if err := os.MkdirAll(d, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(d, "10-bench.conf"), []byte(sb.String()), 0o644)
}

// digest is a release's hex digest, made from a name.
func digest(name string) string {
	s := sha256.Sum256([]byte("bench-detect " + name))
	return hex.EncodeToString(s[:])
}

func (b *bench) rounds(ctx context.Context, afters []time.Duration, minHealthy time.Duration) ([]row, error) {
	var rows []row
	for _, after := range afters {
		r, err := b.round(ctx, after, minHealthy)
		if err != nil {
			return rows, err
		}
		r.print()
		rows = append(rows, r)
	}
	return rows, nil
}

func (r row) print() {
	checks := "all held"
	if r.checks != "" {
		checks = r.checks
	}
	fmt.Printf("%-8d %5s %11s %11s %10s %9s %8d  %s; %s\n", r.machines, r.after, secs(r.crash), secs(r.halt-r.crash), secs(r.back-r.crash),
		secs(r.end-r.crash), r.badRan, r.status, checks)
	if r.why != "" {
		fmt.Printf("%8s record: %s\n", "", r.why)
	}
}

// round deploys a release whose instances crash after their start, and
// measures what happened.
func (b *bench) round(ctx context.Context, after, minHealthy time.Duration) (row, error) {
	r := row{machines: b.machines, after: after}
	hexd := digest(fmt.Sprintf("bad %d %s %d", b.machines, after, time.Now().UnixNano()))
	bad := repository + "@sha256:" + hexd
	if err := os.WriteFile(filepath.Join(b.engine, "args", hexd), []byte("-exit-after "+after.String()+"\n"), 0o644); err != nil {
		return r, err
	}
	// Where each instance's stderr is now: the crash is written past it.
	offsets, err := sizes(b.errDir)
	if err != nil {
		return r, err
	}
	before, err := b.c.SystemdAll(ctx, b.units...)
	if err != nil {
		return r, err
	}
	rep, err := b.deploy(ctx, bad, "--on-failure", "rollback", "--min-healthy-time", minHealthy.String())
	if err != nil {
		return r, err
	}
	r.status = rep.Status
	var problems []string
	check := func(ok bool, format string, args ...any) {
		if !ok {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}

	// The engine's runs: who ran the bad release, and when.
	runs, err := b.runs()
	if err != nil {
		return r, err
	}
	var badStart time.Time
	for i, p := range ports {
		n := 0
		for _, x := range runs[p] {
			if x.image == bad {
				n++
				if badStart.IsZero() || x.at.Before(badStart) {
					badStart = x.at
				}
			}
		}
		if n > 0 {
			r.badRan++
			r.firstOnly = i == 0
		}
		last := runs[p][len(runs[p])-1]
		check(last.image == b.good, "%s's last run is %s, not the good release", p, last.image)
	}
	check(r.badRan > 0, "no instance ran the bad release")
	// The first crash, as the crashing process wrote it.
	var crash time.Time
	logs, err := os.ReadDir(b.errDir)
	if err != nil {
		return r, err
	}
	for _, e := range logs {
		t, err := crashTime(filepath.Join(b.errDir, e.Name()), offsets[e.Name()])
		if err != nil {
			return r, err
		}
		if !t.IsZero() && (crash.IsZero() || t.Before(crash)) {
			crash = t
		}
	}
	check(!crash.IsZero(), "no crash line in the instances' stderr")

	// The record: the first unit failed in its watch and was rolled back,
	// the others untouched.
	check(rep.Status == fleetroll.StatusRolledBack, "status %s: %s", rep.Status, rep.Error)
	var halt, back time.Time
	if len(rep.Units) == len(ports) {
		u := rep.Units[0]
		check(u.Outcome == fleetroll.OutcomeRolledBack, "%s: %s", u.Unit, u.Outcome)
		check(strings.Contains(u.Error, "crashed"), "%s's error does not say it crashed: %s", u.Unit, u.Error)
		r.why = u.Unit + ": " + u.Error
		for _, sp := range u.Phases {
			switch {
			case sp.Phase == fleetroll.PhaseWatch && halt.IsZero():
				halt = sp.Finished
			case sp.Phase == fleetroll.PhaseStart && !halt.IsZero() && back.IsZero():
				back = sp.Finished
			}
		}
		check(!halt.IsZero() && !back.IsZero(), "%s's phases lack the watch or the start after it: %+v", u.Unit, u.Phases)
		for _, o := range rep.Units[1:] {
			check(o.Outcome == fleetroll.OutcomeUntouched, "%s: %s, want untouched", o.Unit, o.Outcome)
		}
	} else {
		check(false, "%d units in the record", len(rep.Units))
	}
	// systemd: every instance running; those never touched not restarted.
	now, err := b.c.SystemdAll(ctx, b.units...)
	if err != nil {
		return r, err
	}
	for i, st := range now {
		check(st.Up(), "%s is %s/%s", b.units[i], st.Active, st.Sub)
		if i > 0 {
			check(st.MainPID == before[i].MainPID, "%s was restarted", b.units[i])
		}
	}
	// The good release's run on the failed instance came before fleet
	// reported it running.
	if l := runs[ports[0]]; len(l) > 0 && !back.IsZero() {
		check(!l[len(l)-1].at.After(back), "the engine ran the good release on %s after fleet reported it running", ports[0])
	}
	r.checks = strings.Join(problems, "; ")
	if badStart.IsZero() || crash.IsZero() || halt.IsZero() || back.IsZero() {
		return r, nil
	}
	r.crash, r.halt, r.back, r.end = crash.Sub(badStart), halt.Sub(badStart), back.Sub(badStart), rep.Finished.Sub(badStart)
	r.measured = true
	return r, nil
}

// sizes are the sizes of the files in dir, by name.
func sizes(dir string) (map[string]int64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			return nil, err
		}
		out[e.Name()] = fi.Size()
	}
	return out, nil
}

// crashTime reads the time in the crash line written past offset in file
// (zero when there is none).
func crashTime(file string, offset int64) (time.Time, error) {
	f, err := os.Open(file)
	if errors.Is(err, os.ErrNotExist) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, err
	}
	defer f.Close()
	if _, err := f.Seek(offset, 0); err != nil {
		return time.Time{}, err
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, crashMark) {
			continue
		}
		i := strings.LastIndex(line, " at ")
		t, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(line[i+4:]))
		if err != nil {
			return time.Time{}, fmt.Errorf("%s: %q: %w", file, line, err)
		}
		return t, nil
	}
	return time.Time{}, sc.Err()
}

type engineRun struct {
	at    time.Time
	image string
}

// runs reads the engine's log of runs, per port, in order.
func (b *bench) runs() (map[string][]engineRun, error) {
	raw, err := os.ReadFile(filepath.Join(b.engine, "runs"))
	if err != nil {
		return nil, err
	}
	out := map[string][]engineRun{}
	for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		f := strings.Fields(l)
		if len(f) != 3 {
			continue
		}
		s, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, fmt.Errorf("engine runs: %q: %w", l, err)
		}
		out[f[1]] = append(out[f[1]], engineRun{at: time.Unix(0, int64(s*1e9)), image: f[2]})
	}
	for _, p := range ports {
		if len(out[p]) == 0 {
			return nil, fmt.Errorf("engine runs: none on %s", p)
		}
	}
	return out, nil
}

// deploy runs fleetroll deploy from the hub (where every machine's address
// is reachable) and returns its record; exit 3 (rolled back) is a record
// too.
func (b *bench) deploy(ctx context.Context, image string, extra ...string) (*fleetroll.Report, error) {
	args := append([]string{"deploy", service, "--image", image, "--ports", strings.Join(ports, ","),
		"--endpoint", b.c.Endpoint, "--etcd-endpoints", b.c.EtcdURL, "-o", "json"}, extra...)
	dctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := b.c.Hub(dctx, b.bin, args...)
	cmd.Dir = b.repo
	out, err := output(cmd)
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 3) {
		return nil, err
	}
	var r fleetroll.Report
	if jerr := json.Unmarshal([]byte(out), &r); jerr != nil {
		return nil, fmt.Errorf("deploy %s: %w\n%s", image, jerr, out)
	}
	return &r, nil
}

// output runs cmd and returns its stdout; an error carries its stderr.
func output(cmd *exec.Cmd) (string, error) {
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %w\n%s", strings.Join(cmd.Args, " "), err, errb.String())
	}
	return out.String(), nil
}
