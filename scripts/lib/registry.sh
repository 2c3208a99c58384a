# shellcheck shell=bash
# The real registry of the publish tests (tests/src/registry.rs starts it):
# Debian's docker-registry (the CNCF distribution registry, 2.8) and skopeo,
# which the tests read the registry with. Source it after services.sh (it
# uses kiln_need); it defines one function and changes nothing by itself.
#
# ensure_registry_packages: installs both Debian packages when missing and
#   the user is root (apt-get), otherwise names them and ends the script.
#   Needs the network, so CI calls it before entering its network namespace
#   (.ci/run). Nothing is started here: each test starts its own registry on
#   a free loopback port and kills it when done.

ensure_registry_packages() {
  kiln_need docker-registry docker-registry
  kiln_need skopeo skopeo
}
