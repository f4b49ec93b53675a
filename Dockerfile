# fleetwatch in containers: one image for the controller, the agent and the
# CLI (the entrypoint is the `fleetwatch` command), plus the demo program the
# compose file watches. The build stage runs scripts/setup.sh, the same script
# the README's quick start runs, so the image is built exactly as a machine is.
FROM node:20-bookworm AS build
WORKDIR /src
COPY . .
RUN scripts/setup.sh \
 && gcc -O2 -g -pthread -o /src/demo-counter test/fixtures/demo-counter.c \
 && npm prune --omit=dev --no-audit --no-fund

FROM node:20-bookworm-slim
# The helper links elfutils (libdw, libelf) and libbpf; nothing else is added.
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libdw1 libelf1 libbpf1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin fleetwatch
WORKDIR /opt/fleetwatch
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
# The console's pages load these from the source tree (tsc emits only JavaScript).
COPY --from=build /src/cli/console/static ./cli/console/static
COPY --from=build /src/agent/native/build/fleetwatch-helper ./agent/native/build/fleetwatch-helper
COPY --from=build /src/demo-counter /usr/local/bin/fleetwatch-demo-counter
# The controller and the CLI run as this user; the agent's service overrides
# it with root holding only CAP_SYS_PTRACE (see docker-compose.yml).
USER 10001:10001
ENTRYPOINT ["node", "/opt/fleetwatch/dist/cli/main.js"]
