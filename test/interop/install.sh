#!/usr/bin/env bash
# Debian packages the integration and interop suites use: the real upstream (Dovecot), real
# IMAP, SMTP and POP3 clients, promtool, haproxy (the ideal-splice baseline in benchmarks), Chromium and
# PostgreSQL (a private server per grant-store test; the packaged cluster is not used), and systemd
# (systemd-analyze verify and systemd-sysusers check the service unit; nothing is started).
# Installs only what is missing; needs root (or sudo).
set -euo pipefail
PKGS=(dovecot-imapd libnet-ssleay-perl dovecot-submissiond dovecot-pop3d python3-aiosmtpd swaks msmtp s-nail mpop getmail6 fetchmail isync mutt neomutt offlineimap3 curl tmux socat python3 openssl prometheus haproxy chromium postgresql systemd)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install.sh: all test packages present"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install.sh: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install.sh: done"
