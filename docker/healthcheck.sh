#!/bin/sh
# HEALTHCHECK for the secretivex image (installed as /usr/local/bin/secretivex-healthcheck).
# Asks the agent for its identities over $SSH_AUTH_SOCK with ssh-add -l:
#   ssh-add exit 0 (identities listed) or 1 (agent answered: none / refused) -> healthy (0)
#   ssh-add exit 2 (cannot connect) or a timeout                              -> unhealthy (1)
sock=${SSH_AUTH_SOCK:-/run/secretivex/agent.sock}
timeout "${SECRETIVEX_HEALTHCHECK_TIMEOUT:-4}" env SSH_AUTH_SOCK="$sock" ssh-add -l >/dev/null 2>&1
rc=$?
case $rc in
0 | 1) exit 0 ;;
2) echo "agent not answering on $sock" >&2 ;;
124) echo "agent did not answer within ${SECRETIVEX_HEALTHCHECK_TIMEOUT:-4}s on $sock" >&2 ;;
*) echo "ssh-add -l exited $rc on $sock" >&2 ;;
esac
exit 1
