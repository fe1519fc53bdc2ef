// Package e2e holds the tests that run fleetroll against the local real fleet
// cluster (etcd, systemd --user and fleet v1.0.0's own server). They start
// the cluster themselves; when it cannot start they fail under CI=true and
// skip elsewhere.
package e2e
