package coord

import (
	"context"
	"strings"

	client "go.etcd.io/etcd/client/v2"
)

// oneLineKeys is the keys API Connect returns: the errors of etcd's client
// come out on one line. Its ClusterError ends each endpoint's error with a
// newline, which made an empty line on stderr and a "\n" inside a JSON
// log value. The error is kept underneath (errors.Is, errors.As).
type oneLineKeys struct{ client.KeysAPI }

// etcdError is an etcd client error told on one line.
type etcdError struct{ err error }

func (e etcdError) Error() string { return oneLine(e.err.Error()) }
func (e etcdError) Unwrap() error { return e.err }

// oneLine joins a message's lines with "; ", without empty ones.
func oneLine(s string) string {
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}

// tidy wraps an error whose message spans lines; any other (etcd's
// answers, client.Error, which client.IsKeyNotFound asserts; a context's
// errors) is returned as it is.
func tidy(err error) error {
	if err == nil || !strings.Contains(err.Error(), "\n") {
		return err
	}
	return etcdError{err}
}

func (k oneLineKeys) Get(ctx context.Context, key string, opts *client.GetOptions) (*client.Response, error) {
	r, err := k.KeysAPI.Get(ctx, key, opts)
	return r, tidy(err)
}

func (k oneLineKeys) Set(ctx context.Context, key, value string, opts *client.SetOptions) (*client.Response, error) {
	r, err := k.KeysAPI.Set(ctx, key, value, opts)
	return r, tidy(err)
}

func (k oneLineKeys) Delete(ctx context.Context, key string, opts *client.DeleteOptions) (*client.Response, error) {
	r, err := k.KeysAPI.Delete(ctx, key, opts)
	return r, tidy(err)
}

func (k oneLineKeys) Create(ctx context.Context, key, value string) (*client.Response, error) {
	r, err := k.KeysAPI.Create(ctx, key, value)
	return r, tidy(err)
}

func (k oneLineKeys) CreateInOrder(ctx context.Context, dir, value string, opts *client.CreateInOrderOptions) (*client.Response, error) {
	r, err := k.KeysAPI.CreateInOrder(ctx, dir, value, opts)
	return r, tidy(err)
}

func (k oneLineKeys) Update(ctx context.Context, key, value string) (*client.Response, error) {
	r, err := k.KeysAPI.Update(ctx, key, value)
	return r, tidy(err)
}

func (k oneLineKeys) Watcher(key string, opts *client.WatcherOptions) client.Watcher {
	return oneLineWatcher{k.KeysAPI.Watcher(key, opts)}
}

type oneLineWatcher struct{ client.Watcher }

func (w oneLineWatcher) Next(ctx context.Context) (*client.Response, error) {
	r, err := w.Watcher.Next(ctx)
	return r, tidy(err)
}
