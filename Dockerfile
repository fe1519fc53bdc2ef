# fleetroll: one static binary in a minimal image, run as a non-root user.
#
#   docker build -t fleetroll --build-arg VERSION=$(git describe --tags --always --dirty) \
#     --build-arg REVISION=$(git rev-parse --short=12 HEAD) .
#
# make release builds the release image without an engine or a base image
# (contrib/release, docs/releasing.md); this file is for building with one.
#
# The base images are build arguments, so the image also builds with a
# builder made locally and no registry at all (contrib/container/builder.sh).
ARG BUILDER_IMAGE=docker.io/library/golang:1.26-bookworm
ARG RUNTIME_IMAGE=scratch

FROM ${BUILDER_IMAGE} AS build
ARG VERSION=dev
ARG REVISION=
ARG GOPROXY
ARG GOFLAGS
ENV CGO_ENABLED=0 GOTOOLCHAIN=local
WORKDIR /src
COPY go.mod go.sum ./
COPY cmd ./cmd
COPY fleetroll ./fleetroll
COPY hook ./hook
RUN go build -trimpath -ldflags "-s -w -X main.version=${VERSION} -X main.revision=${REVISION}" -o /out/fleetroll ./cmd/fleetroll \
 && mkdir -p /out/etc \
 && echo 'fleetroll:x:65532:65532:fleetroll:/nonexistent:/sbin/nologin' > /out/etc/passwd \
 && echo 'fleetroll:x:65532:' > /out/etc/group

FROM ${RUNTIME_IMAGE}
# CA certificates for Docker Hub callbacks over HTTPS.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/etc/passwd /out/etc/group /etc/
COPY --from=build /out/fleetroll /usr/local/bin/fleetroll
ENV PATH=/usr/local/bin
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["fleetroll"]
CMD ["serve"]
