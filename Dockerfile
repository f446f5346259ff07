# Cairn in a container, with no base image: the root filesystem is the cairn binary and the
# libraries it loads, assembled by scripts/docker-rootfs. Build with
#
#   scripts/docker-rootfs && docker build -t cairn .
#
# One node listens on every interface of its container; it needs the name others reach it
# at (CAIRN_ADVERTISE_ADDR, e.g. its compose service name) and, to join a cluster, CAIRN_JOIN.
# deploy/docker-compose.yml runs three.
FROM scratch
COPY target/docker/rootfs/ /
COPY --chown=10001:10001 target/docker/data/ /data/
USER 10001:10001
ENV CAIRN_DATA_DIR=/data \
    CAIRN_PG_ADDR=0.0.0.0:5433 \
    CAIRN_HTTP_ADDR=0.0.0.0:8080 \
    CAIRN_CLUSTER_ADDR=0.0.0.0:7000 \
    CAIRN_HEALTH_URL=http://127.0.0.1:8080
VOLUME ["/data"]
# PostgreSQL clients, HTTP (API, dashboard), and other nodes (TCP for Raft, UDP for gossip).
EXPOSE 5433 8080 7000 7000/udp
HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=3 CMD ["/cairn", "health"]
ENTRYPOINT ["/cairn"]
CMD ["start"]
