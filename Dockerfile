# One image for every ordermesh binary: the services, the gateway and
# ordermeshctl (which also serves as the healthcheck client).
# Build: docker build -t ordermesh .   Run one: docker run ordermesh order

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# -tags grpcnotrace: see internal/buildflags.
RUN CGO_ENABLED=0 go build -tags grpcnotrace -trimpath -ldflags="-s -w" -o /out/ \
      ./services/order ./services/inventory ./services/payment ./services/notification \
      ./gateway ./cmd/ordermeshctl

# Static binaries on a minimal base, running as an unprivileged user.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER nonroot:nonroot
ENTRYPOINT []
