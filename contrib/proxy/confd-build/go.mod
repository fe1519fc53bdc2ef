// Builds confd v0.16.0 (which has no go.mod) from the module proxy:
//   cd contrib/proxy/confd-build && go build -mod=mod -o confd github.com/kelseyhightower/confd
// The pins make its old dependency graph build on Go 1.26; `go mod tidy`
// fails on vault's test dependencies, hence -mod=mod.
module github.com/fleetroll/fleetroll/contrib/proxy/confd-build

go 1.26.0

require (
	github.com/coreos/etcd v3.3.4+incompatible
	github.com/go-ini/ini v1.36.0
	github.com/hashicorp/consul/api v1.4.0
	github.com/hashicorp/vault/api v1.0.4
	github.com/kelseyhightower/confd v0.16.0
	github.com/ugorji/go v1.1.1
	golang.org/x/crypto v0.58.0
	google.golang.org/grpc v1.22.0
)

require github.com/jmespath/go-jmespath v0.4.0 // indirect

require (
	github.com/BurntSushi/toml v0.3.1
	github.com/aws/aws-sdk-go v1.13.41 // indirect
	github.com/coreos/go-semver v0.3.1 // indirect
	github.com/fsnotify/fsnotify v1.10.1 // indirect
	github.com/garyburd/redigo v1.6.0 // indirect
	github.com/gogo/protobuf v1.3.2 // indirect
	github.com/kelseyhightower/memkv v0.1.1
	github.com/samuel/go-zookeeper v0.0.0-20190923202752-2cc03de413da // indirect
	github.com/sirupsen/logrus v1.10.2 // indirect
	github.com/xordataexchange/crypt v0.0.3-0.20170626215501-b2862e3d0a77 // indirect
)
