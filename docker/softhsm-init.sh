#!/bin/bash
# Entrypoint of the `softhsm` image target (installed as
# /usr/local/bin/secretivex-softhsm-entrypoint): make sure a SoftHSM token with
# keys exists, write an agent config with a pkcs11 store for it, then hand over
# to secretivex-entrypoint (which starts the agent on $SSH_AUTH_SOCK).
#
# Token: reused when $SECRETIVEX_TOKEN_DIR already holds a token with the label
# (mount a volume there and a restarted or re-created container keeps its keys);
# otherwise initialised with softhsm2-util and keys generated with pkcs11-tool.
#
# Environment:
#   SECRETIVEX_TOKEN_LABEL      token label                       (default secretivex)
#   SECRETIVEX_TOKEN_PIN        user PIN; or SECRETIVEX_TOKEN_PIN_FILE. When neither is
#                               set, a fresh token gets a random PIN kept in
#                               $SECRETIVEX_TOKEN_DIR/.secretivex-user-pin (demo/test use)
#   SECRETIVEX_TOKEN_SO_PIN     SO PIN for initialisation         (default: random, not kept)
#   SECRETIVEX_TOKEN_DIR        SoftHSM token directory           (default /var/lib/secretivex/tokens;
#                               when unset and that is not writable, e.g. with --user, an
#                               ephemeral one under SECRETIVEX_RUNTIME_DIR)
#   SECRETIVEX_GENERATE_KEYS    keys for a new (or empty) token, "TYPE[=LABEL] ..."
#                               TYPE: ed25519 p256 p384 p521 rsa2048 rsa3072 rsa4096
#                               (default "ed25519 p256 rsa3072"; "" = none)
#   SECRETIVEX_PKCS11_MODULE    module path                       (default Debian's libsofthsm2.so)
#   SECRETIVEX_WRITE_CONFIG     0 = do not write/pass the generated config (bring your own)
#   SECRETIVEX_RUNTIME_DIR      where softhsm2.conf and the config go (default /tmp/secretivex-UID)
#   SOFTHSM2_CONF               when set, used as is (its tokendir wins over SECRETIVEX_TOKEN_DIR)
set -euo pipefail

module=${SECRETIVEX_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
label=${SECRETIVEX_TOKEN_LABEL:-secretivex}
token_dir=${SECRETIVEX_TOKEN_DIR:-/var/lib/secretivex/tokens}
key_specs=${SECRETIVEX_GENERATE_KEYS-ed25519 p256 rsa3072}
runtime_dir=${SECRETIVEX_RUNTIME_DIR:-/tmp/secretivex-$(id -u)}
write_config=${SECRETIVEX_WRITE_CONFIG:-1}
pin_keep_file=$token_dir/.secretivex-user-pin

say() { printf 'secretivex-softhsm: %s\n' "$*" >&2; }
die() {
    say "$*"
    exit 2
}
random_pin() { od -An -N12 -tx1 /dev/urandom | tr -d ' \n'; }
hex() { printf '%s' "$1" | od -An -tx1 | tr -d ' \n'; }
yaml_str() {
    local s=${1//\\/\\\\}
    printf '"%s"' "${s//\"/\\\"}"
}

# Only set up the token when the agent is what runs; `docker run IMAGE bash` etc. pass through.
launch_agent=0
case ${1:-} in
--version | -V) [[ $# -eq 1 ]] || launch_agent=1 ;;
"" | -* | agent) launch_agent=1 ;;
esac
if ((!launch_agent)); then
    exec /usr/local/bin/secretivex-entrypoint "$@"
fi
[[ ${1:-} == agent ]] && shift

# Parse SECRETIVEX_GENERATE_KEYS before touching the token: a typo changes nothing.
gen_names=() gen_types=() gen_labels=()
declare -A seen=()
for spec in $key_specs; do
    type=${spec%%=*}
    case $type in
    ed25519) key_type=EC:edwards25519 ;;
    p256) key_type=EC:prime256v1 ;;
    p384) key_type=EC:secp384r1 ;;
    p521) key_type=EC:secp521r1 ;;
    rsa2048 | rsa3072 | rsa4096) key_type=rsa:${type#rsa} ;;
    *) die "SECRETIVEX_GENERATE_KEYS: unknown key type \"$type\" (ed25519 p256 p384 p521 rsa2048 rsa3072 rsa4096)" ;;
    esac
    if [[ $spec == *=* ]]; then
        key_label=${spec#*=}
        [[ -n $key_label ]] || die "SECRETIVEX_GENERATE_KEYS: empty label in \"$spec\""
    else
        n=$((${seen[$type]:-0} + 1))
        seen[$type]=$n
        key_label=$type
        ((n == 1)) || key_label=$type-$n
    fi
    gen_names+=("$type") gen_types+=("$key_type") gen_labels+=("$key_label")
done

[[ -r $module ]] || die "PKCS#11 module $module not found"
(umask 077 && mkdir -p "$runtime_dir") || die "cannot create $runtime_dir (read-only root? add --tmpfs /tmp)"

if [[ -z ${SOFTHSM2_CONF:-} ]]; then
    if [[ -z ${SECRETIVEX_TOKEN_DIR:-} && ! -w $token_dir ]]; then
        # Run with --user <another uid> (e.g. the host user, so that it owns the socket)
        # and no token volume: keep an ephemeral token next to the generated config.
        say "$token_dir is not writable by uid $(id -u): using an ephemeral token in $runtime_dir/tokens"
        token_dir=$runtime_dir/tokens
        pin_keep_file=$token_dir/.secretivex-user-pin
    fi
    if [[ ! -d $token_dir ]]; then
        (umask 077 && mkdir -p "$token_dir") 2>/dev/null ||
            die "token directory $token_dir does not exist and cannot be created by uid $(id -u)"
    fi
    if [[ ! -w $token_dir ]]; then
        if [[ $(stat -c %u "$token_dir") == "$(id -u)" ]]; then
            hint="the filesystem is read-only (--read-only?): mount a volume, -v NAME:$token_dir"
        else
            hint="chown the volume to $(id -u):$(id -g)"
        fi
        die "token directory $token_dir is not writable by uid $(id -u) gid $(id -g)" \
            "(it is $(stat -c '%u:%g, mode %a' "$token_dir")); $hint"
    fi
    export SOFTHSM2_CONF=$runtime_dir/softhsm2.conf
    printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' \
        "$token_dir" >"$SOFTHSM2_CONF"
fi

token_present() {
    pkcs11-tool --module "$module" --list-token-slots 2>/dev/null | awk -v want="$label" '
        /^[[:space:]]*token label[[:space:]]*:/ {
            v = substr($0, index($0, ":") + 2); sub(/[[:space:]]+$/, "", v)
            if (v == want) found = 1
        }
        END { exit !found }'
}

p11() { pkcs11-tool --module "$module" --token-label "$label" --login --pin "$pin" "$@"; }

private_key_labels() {
    p11 --list-objects --type privkey 2>/dev/null |
        awk '/^[[:space:]]*label:/ { sub(/^[[:space:]]*label:[[:space:]]*/, ""); print }'
}

fresh=0
if token_present; then
    say "reusing token \"$label\" from the token directory"
else
    fresh=1
fi

if [[ -n ${SECRETIVEX_TOKEN_PIN:-} ]]; then
    pin=$SECRETIVEX_TOKEN_PIN
elif [[ -n ${SECRETIVEX_TOKEN_PIN_FILE:-} ]]; then
    [[ -r $SECRETIVEX_TOKEN_PIN_FILE ]] || die "SECRETIVEX_TOKEN_PIN_FILE=$SECRETIVEX_TOKEN_PIN_FILE is not readable"
    pin=$(head -n 1 "$SECRETIVEX_TOKEN_PIN_FILE")
elif [[ -r $pin_keep_file ]]; then
    pin=$(<"$pin_keep_file")
elif ((fresh)); then
    pin=$(random_pin)
    (umask 077 && printf '%s\n' "$pin" >"$pin_keep_file")
    say "no SECRETIVEX_TOKEN_PIN given: generated a random PIN, kept in $pin_keep_file"
else
    die "token \"$label\" exists but no PIN was given (SECRETIVEX_TOKEN_PIN or SECRETIVEX_TOKEN_PIN_FILE)"
fi
[[ -n $pin ]] || die "the token PIN is empty"

if ((fresh)); then
    so_pin=${SECRETIVEX_TOKEN_SO_PIN:-$(random_pin)}
    say "initialising token \"$label\""
    softhsm2-util --init-token --free --label "$label" --pin "$pin" --so-pin "$so_pin" >/dev/null ||
        die "softhsm2-util --init-token failed"
    unset so_pin
fi

if ! labels=$(private_key_labels); then
    die "cannot log in to token \"$label\" (wrong PIN?)"
fi
# Keys are generated for a new token, or one left empty by an interrupted start;
# a token that already has keys is never changed.
if [[ -z $labels ]]; then
    for i in "${!gen_types[@]}"; do
        say "generating ${gen_names[i]} key \"${gen_labels[i]}\""
        p11 --keypairgen --key-type "${gen_types[i]}" --label "${gen_labels[i]}" \
            --id "$(hex "${gen_labels[i]}")" >/dev/null 2>&1 ||
            die "pkcs11-tool --keypairgen ${gen_types[i]} failed"
    done
    labels=$(private_key_labels)
fi
key_list=$(printf '%s' "$labels" | paste -sd ' ' -)
say "token \"$label\" keys: ${key_list:-(none)}"

export SECRETIVEX_TOKEN_PIN=$pin
unset SECRETIVEX_TOKEN_SO_PIN SECRETIVEX_TOKEN_PIN_FILE pin

if [[ $write_config != 0 ]]; then
    config=$runtime_dir/config.yaml
    # Owner-only whatever the container's umask: the agent refuses a config file
    # its group or others could write.
    (umask 077 && : >"$config" && chmod 600 "$config") || die "cannot create $config"
    {
        printf '# written by secretivex-softhsm-entrypoint at container start\n'
        printf 'stores:\n'
        printf '  - type: pkcs11\n'
        printf '    module: %s\n' "$(yaml_str "$module")"
        printf '    token_label: %s\n' "$(yaml_str "$label")"
        printf '    pin_env: SECRETIVEX_TOKEN_PIN\n'
    } >"$config"
    set -- agent --config "$config" "$@"
else
    set -- agent "$@"
fi
exec /usr/local/bin/secretivex-entrypoint "$@"
