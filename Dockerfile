# The one image every program of Ambit runs from (agent, controller, CNI installer, CLI), on Node 24 LTS; the code
# runs on Node 20 too (package.json engines). Built in CI elsewhere: `docker build -t ambit .` (not on these
# machines). The manifests run /app/dist/cli/main.js; the CNI plugin's single executable is /app/dist/ambit-cni.
# Node 24 pinned to a release (and, where the build can resolve it, to its digest)
FROM node:24.9.0-bookworm-slim AS build
# node-gyp builds the socket-option addon (native/ambit_sockopt.c)
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json binding.gyp tsconfig.json ./
COPY scripts ./scripts
COPY native ./native
COPY agent ./agent
COPY cni ./cni
COPY cli ./cli
COPY controller ./controller
COPY core ./core
COPY bench ./bench
COPY testbed ./testbed
COPY test ./test
# the tests and the bench are compiled with the rest (one tsconfig) and left out of the image
RUN npm ci && npm run build:cni && npm prune --omit=dev && rm -rf dist/test dist/bench

FROM node:24.9.0-bookworm-slim
# what the agent runs on its node: iptables and ipset (both backends), nft for the bridge table, ip for routes,
# conntrack to flush entries of pods that left
RUN apt-get update && apt-get install -y --no-install-recommends iptables ipset nftables iproute2 conntrack \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/build/Release ./build/Release
# the agent runs as root (manifests/agent.yaml: NET_ADMIN, NET_RAW); the controller overrides with a non-root user
USER 65532
ENTRYPOINT ["node", "/app/dist/cli/main.js"]
