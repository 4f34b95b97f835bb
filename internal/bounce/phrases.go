package bounce

import "strings"

// sendingQuotaPhrases say that the quota of mail the sender may send through its provider is
// used up for a period: Gmail's and Google Workspace's "550 5.4.5 Daily user sending quota
// exceeded" (or "limit"), Amazon SES's "454 Throttling failure: Daily message quota exceeded",
// Microsoft 365's "550 5.1.90 ... you've reached your daily limit for message recipients",
// Exchange's "SubmissionQuotaExceededException" and "has exceeded its 24-hour sending limit",
// hosting providers' "limit of 400 rcpts per 24 hours", SendGrid's "451 Authentication failed:
// Maximum credits exceeded".
var sendingQuotaPhrases = []string{
	"sending quota", "daily message quota", "message quota exceeded", "sending limit",
	"daily limit for message recipients", "24-hour sending limit", "submissionquotaexceeded",
	"rcpts per 24 hours", "maximum credits exceeded",
}

// SendingQuota reports whether a server's answer says that the sender has used up its quota
// at its provider for a period, which is not about the recipient (sendingQuotaPhrases).
func SendingQuota(text string) bool { return containsAny(normalise(text), sendingQuotaPhrases) }

// phraseTable maps what real mail servers say to a reason. The text they are matched against is
// lower-cased with its white space folded and SMTP multi-line prefixes ("550-5.7.1 ") removed.
// A phrase with " … " in it matches when its pieces appear in that order with anything between.
//
// The table is checked in order and the first reason with a matching phrase wins, so the more
// specific reasons come first (a full mailbox before an unknown user, an SPF failure before a
// generic block). The phrases were gathered from the answers of Postfix, Exim, Sendmail, qmail,
// Courier, Exchange and Office 365, Gmail, Yahoo, Outlook.com, iCloud, AOL, Orange, mail.ru,
// Mimecast and others; the public tables of the sisimai project (BSD 2-clause) were a source of
// many of them.
var phraseTable = []struct {
	reason  Reason
	phrases []string
}{
	{ReasonSystemFull, []string{
		"mail system full", "insufficient system storage", "insufficient disk space",
		"not enough disk space", "not sufficient disk space", "system storage exceeded",
	}},
	// A sender's quota used up (SendingQuota), before the full mailboxes whose "quota exceeded"
	// it would otherwise match: it says nothing of the recipient.
	{ReasonTooManyConn, sendingQuotaPhrases},
	{ReasonMailboxFull, []string{
		"mailbox full", "mailbox is full", "mailbox has exceeded", "mailbox size limit exceeded",
		"mailbox would exceed", "mailbox exceeds", "mailfolder is full", "full mailbox",
		"over quota", "overquota", "over the quota", "quota exceeded", "quota exceed", "exceeded quota",
		"exceeded storage allocation", "exceeds its storage",
		"no space left on device",
		"user's space has been used up", "user has too many messages", "too much mail data",
		"boite du destinataire pleine", "recipient's mailbox exceeded", "mailbox exceeded", "mailbox … full", "mailbox … quota", "disk … quota",
		"account is … quota", "maildir … quota", "quota violation", "storage quota",
		"out of storage", "inbox is full", "inbox full", "recipient's mailbox is full",
		"mailbox not large enough", "enough … space", "user is over", "postfach voll",
		"exceeded the storage", "exceeded his/her quota",
	}},
	{ReasonMesgTooBig, []string{
		"message too big", "message file too big", "message size exceeds", "message too large for",
		"exceeded maximum inbound message size", "exceeded the maximum incoming message size",
		"max message size exceeded", "message length exceeds", "size exceeds fixed",
		"message size limit", "message is too large", "taille limite du message",
		"line limit exceeded", "size limit",
	}},
	{ReasonExceedLimit, []string{
		"message header size exceeds limit", "message too large",
	}},
	{ReasonAuthFailure, []string{
		"dmarc policy", "dmarc-policy", "dmarc validation", "dmarc rejection", "dmarcrejection",
		"spf check: fail", "spf check failed", "spf fail", "sender policy framework",
		"bad spf records", "spf validation", "spf record", "did not pass spf", "spf=fail",
		"dkim=fail", "dkim signature", "dkim validation", "dkim check", "unauthenticated email",
		"doesn't meet the required authentication level", "not pass dmarc",
		"5322.from address doesn't meet the authentication requirements",
		"authentication requirements", "please inspect your spf settings", "fails to pass authentication checks", "does not have authentication information", "//spf.pobox.com",
		"is not allowed to send from <",
	}},
	{ReasonRequirePTR, []string{
		"reverse dns", "reverse lookup", "ptr record", "ptr-record", "ptr resource record",
		"cannot find your hostname", "cannot resolve your address", "ip name lookup failed",
		"unresolvable relay host name", "no reverse", "rdns", "does not have a ptr",
		"forward dns entry does not point to the sending ip", "client host rejected: cannot find",
		"unverifyable sending ips", "dns lookup failure: … try again later",
		"domain … mismatches client ip",
	}},
	{ReasonNotCompliantRFC, []string{
		"not rfc 5322 compliant", "rfc 5322 compliant", "rfc5322", "rfcmessagenoncompliant",
		"duplicate header", "multiple … header", "not compliant with rfc", "rfc 2822 compliant",
	}},
	{ReasonVirusDetected, []string{
		"virus detected", "virus found", "infected with a virus", "contains a virus",
		"potentially executable attachment", "prohibited virus", "used by recent viruses",
		"malware detected", "virus phishing",
	}},
	{ReasonSpeeding, []string{
		"please try again slower", "temporarily rate limited", "rate limited",
		"receiving mail at a rate that prevents", "rate limit exceeded for", "rate that prevents",
		"sending too fast", "too fast",
	}},
	{ReasonTooManyConn, []string{
		"too many connections", "too many concurrent", "connection rate limit",
		"exceeds per-domain connection limit", "too many smtp sessions", "too many errors from your ip",
		"maximum connection limit", "frequency limited", "too many recipients", "trop de connexions",
		"max emails per hour", "daily message quota exceeded", "maximum sending rate exceeded",
		"we have already made numerous attempts", "too many messages", "throttl",
		"exceeded the rate limit", "temporarily deferred … rate",
	}},
	{ReasonBadReputation, []string{
		"poor email reputation", "poor reputation", "bad reputation", "low reputation",
		"reputation problems", "ip reputation", "domain reputation", "rate limited due to ip reputation",
		"unexpected volume or user complaints",
	}},
	{ReasonHasMoved, []string{
		"has been replaced by", "user has moved", "mailbox has moved", "address has changed",
		"no longer at this address", "moved to a new address",
	}},
	{ReasonSuspend, []string{
		"is currently suspended", "has been suspended", "account suspended", "user suspended",
		"mailbox suspended", "temporary locked", "account is locked",
		"mailbox disabled", "mailbox is disabled", "account disabled", "account has been disabled",
		"account is disabled", "is disabled", "inactive account", "account is inactive",
		"mailbox is inactive", "user not active", "invalid/inactive user", "deactivated mailbox",
		"mailbox is frozen", "user is terminated", "archived recipient", "boite du destinataire archivee",
		"temporarily inactive", "recipient suspend", "disabled or discontinued",
		"email account that you tried to reach is disabled", "this mailbox is disabled",
		"user or domain is disabled", "mailbox unavailable or access denied",
		"this address no longer accepts mail", "account has been deactivated", "inactive user",
		"account expired", "mailbox currently suspended", "this account has been temporarily suspended", "account is blocked", "tried to reach is inactive",
	}},
	{ReasonNoRelaying, []string{
		"relay access denied", "relaying denied", "relay denied", "relay not permitted",
		"relaying not allowed", "no relaying", "not allowed to relay", "unable to relay",
		"not permitted to relay", "as a relay", "not an open relay", "relaying mail to",
		"we don't handle mail for", "not a gateway", "this system is not configured to relay",
		"insecure mail relay", "not local host", "specified domain is not allowed",
		"that domain isn't in my list of allowed rcpthost", "relay prohibited",
		"requires authentication when attempting to send to a non-local",
	}},
	{ReasonMailerError, []string{
		"procmail:", "command died with status", "pipe to |/", "bin/maildrop", "bin/procmail",
	}},
	{ReasonRejected, []string{
		"sender address rejected", "sender rejected", "sender was rejected", "sender verify failed",
		"sender denied", "invalid sender", "bad sender's", "sender domain", "domain of sender address",
		"unroutable sender address", "sender address has been blacklisted", "sender is in my black list",
		"mail from … denied", "sender email address rejected",
		"to/from an address that has been blacklisted", "permission to post", "投稿する権限",
	}},
	{ReasonNotAccept, []string{
		"null mx", "nullmx", "does not accept mail", "host/domain does not accept mail",
		"host does not accept mail", "mail receiving disabled",
		"no mx record found for domain", "domain does not accept email", "accepts no mail",
		"smtp protocol returned a permanent error", "no mx found", "indicated no smtp service", "system not accepting network messages",
	}},
	{ReasonHostUnknown, []string{
		"host unknown", "unknown host", "host or domain name not found", "domain does not exist",
		"domain not found", "no such domain", "unrouteable address", "unroutable address",
		"domain is not reachable", "domain must exist", "recipient domain must exist",
		"name or service not known", "mail domain mentioned in email address is unknown",
		"unknown domain", "domain name not found", "no mx or a record", "no mx record",
		"domain … does not exist", "dns lookup failure: host", "553 … does not exist", "the account or domain may not exist",
		"nxdomain", "host not found", "could not be resolved",
	}},
	{ReasonUserUnknown, []string{
		"not listed in public name", "user unknown", "unknown user", "no such user", "no such mailbox", "no such recipient",
		"no such person", "no such address", "unknown recipient", "recipient unknown",
		"address unknown", "unknown address", "unknown mailbox", "mailbox unknown",
		"invalid recipient", "invalid mailbox", "invalid address", "recipient not found",
		"user not found", "mailbox not found", "address not found", "addressee unknown",
		"user does not exist", "user doesn't exist", "mailbox does not exist",
		"address does not exist", "recipient does not exist", "account does not exist",
		"email account that you tried to reach does not exist", "does not exist here",
		"not a valid mailbox", "not a valid recipient", "not a valid user",
		"is not a known user", "not known at this site", "user not known",
		"mailbox unavailable", "mailbox is unavailable", "mailbox not available",
		"mailbox not present", "mailbox invalid", "no mailbox here", "no mailbox by that name",
		"no mail box available", "no account by that name", "no valid recipients",
		"recipient address rejected: user", "recipient address rejected: unknown user",
		"recipient address rejected: invalid", "recipient address rejected: access denied",
		"recipient address rejected: userunknown",
		"recipient rejected", "recipient is not local", "recipient not ok", "recipient is not accepted",
		"recipient refuses to accept", "not a local address", "is not an active address",
		"badrcptto", "validrcptto", "bad destination mailbox", "bad recipient", "bad address",
		"destination addresses were unknown", "destination server rejected recipients",
		"the recipient name is not recognized", "recipient name is not recognized",
		"resolver.adr.recipientnotfound", "resolver.adr.recipient notfound",
		"user missing home directory", "vdeliver: invalid or unknown virtual user",
		"this user doesn't have a", "there is no one at this address",
		"email address could not be found", "address not present in directory",
		"this email address is wrong or no longer valid", "the following recipients was undeliverable",
		"utilisateur inconnu", "adresse d au moins un destinataire invalide",
		"nessun utente", "no existe", "unbekannt", "existiert nicht",
		"weil die adresse nicht gefunden wurde", "sorry, your envelope recipient has been denied",
		"that domain or user isn't in my list of allowed rcpthosts", "can't accept user",
		"not email addresses", "user (… ) unknown", "user … was not found", "user … does not exist",
		"mailbox … does not exist", "recipient … was not found in", "account … does not exist",
		"rcpt … does not exist", "no … in name directory", "non … existent user",
		"unknown e … mail address", "unknown local … part", "<… > not found",
		"said: 550 … 5.1.1 … user unknown", "unknown or illegal alias",
		"invalid user", "non-existent", "delivery userid", "nonexistent", "does not exist.",
		"account is unavailable", "account unavailable",
	}},
	{ReasonFiltered, []string{
		"message filtered", "message rejected due to user rules", "user refuses to receive",
		"refuse to receive", "user reject", "blocked by the recipient", "you have been blocked by",
		"refused due to recipient preferences", "only accepting mail from specific",
		"account is protected by", "is not accepting any mail", "has restricted sms e-mail",
		"not found recipient account", "bounced address",
	}},
	{ReasonPolicyViolation, []string{
		"policy violation", "local policy", "denied by policy", "rejected for policy reasons",
		"not accepted for policy reasons", "organizational settings", "organization policy",
		"security policies", "closed mailing list", "members-only list", "illegal attachment",
		"not accepting mail with", "header are not accepted", "header error",
		"messages with multiple addresses", "message given low priority", "mass mailer",
		"not subscribed to this group", "protocol violation", "potential security issue",
		"containing images or other attachments", "solving a captcha", "content presents a potential",
	}},
	{ReasonSpamDetected, []string{
		"spam detected", "as spam", "is spam", "be spam", "spam message", "spam content", "spam score",
		"spam filter", "spam-like", "spamassassin", "spam points", "spam email", "spam rejection",
		"spam refused", "spam blocked", "spam not accepted", "spam check", "probable spam",
		"high probability of spam", "spam or virus", "spam/virus", "spambouncer",
		"spam complaints", "spamming not allowed", "too much spam", "spam block", "- spam", "spam policy", "unsolicited", "bulk mail", "bulk email", "junk mail", "content filter rejection",
		"message content rejected", "mail content denied", "rejecting banned content",
		"rejecting mail content", "blacklisted url", "uribl", "recurrent pattern detection",
		"unacceptable content", "possible spam", "looks like spam", "appears to be unsolicited",
		"message filtered. please see", "your message has been temporarily blocked by our filter",
		"554 5.7.0 reject, id=", "greylisted … please try again",
	}},
	{ReasonBlocked, []string{
		"blocked using", "blacklisted by", "blacklisted", "blocklisted", "block list", "blocklist",
		"blacklist", "listed at", "listed in", "listed on", "is listed", "dnsbl", "rbl",
		"spamhaus", "spamcop", "barracuda", "sorbs", "abuseat", "client host rejected",
		"client host … blocked", "helo command rejected", "rejecting open proxy",
		"dynamic ip", "dynamic/zombied", "hosts with dynamic", "your ip", "sender ip",
		"bad sender ip", "banned sending ip", "access denied, banned", "not allowed to connect",
		"not currently accepting mail from your ip", "connection refused", "connection reset",
		"connection dropped", "connection was dropped", "esmtp not accepting connections",
		"service not available, closing transmission channel", "go away", "service refused",
		"please use the smtp server of your isp", "no access from mail server",
		"has been blocked", "was blocked", "is blocked", "blocked by", "blocked -", "access denied",
		"ip address", "your server requires confirmation", "confirm this mail server",
		"part of their network is on our block list", "host network not allowed",
		"smtp error from remote mail server after initial connection",
		"refused to talk to me", "refused - see http", "you are sending spam",
		"mail from … refused", "messages from … temporarily deferred", "refused",
		"not accepting messages from", "banned", "is not allowed to send mail from",
	}},
	{ReasonRejected, []string{
		"sender rejected", "sender address rejected", "sender was rejected", "sender verify failed",
		"sender verification", "sender not pre-approved", "invalid sender", "sender is in my black list",
		"sender address has been blacklisted", "sender email address rejected", "sender domain",
		"domain of sender address", "sender denied", "unroutable sender address", "bogus mail from",
		"null sender is not allowed", "empty envelope senders not allowed", "batv",
		"returned mail not accepted here", "administrative prohibition",
		"not allowed to post to this mailing list", "you are not allowed to post",
		"delivery not authorized, message refused", "mail from not owned by user",
		"this server does not accept mail from", "email address is not verified",
		"access denied (in reply to mail from", "fully qualified email address required",
		"does not exist e2110", "senderfilterconfig", "no third-party dsns", "unsigned dsn",
		"mx records for", "can't determine purported responsible address",
		"sending this from a different address or alias", "isn't on the recipient's list of senders",
		"bad sender", "sender address", "envelope blocked", "from: domain is invalid",
		"invalid domain, see", "rule imposed mailbox access for", "sender is spammer",
		"your access to submit messages", "emetteur invalide", "spam reporting address",
		"backscatter protection", "denied by secumail", "not a registered gateway user",
	}},
	{ReasonNetworkError, []string{
		"no route to host", "host is unreachable", "network is unreachable", "host name lookup failure",
		"host not found, try again", "malformed name server reply", "malformed or unexpected name server reply",
		"mail forwarding loop", "forwarding loop", "hop count exceeded", "too many hops",
		"message looping", "routing loop", "mail loop", "loops back to myself",
		"unable to resolve route", "unrouteable mail domain", "dns records for the destination computer could not be found",
		"could not connect and send the mail", "name service error", "temporary failure in name resolution",
		"dns error", "network error", "dns lookup", "lookup error", "domain lookup failed", "unable to look up",
	}},
	{ReasonExpired, []string{
		"delivery time expired", "delivery expired", "message expired", "expired after",
		"has been delayed", "delayed for", "connection timed out", "timed out", "timeout",
		"could not find a gateway for", "delivery attempts will continue", "giving up on",
		"have been failing for a long time", "retry time not reached", "retry timeout exceeded",
		"in the queue too long", "queue too long", "not reachable within the allowed queue period",
		"could not be delivered for", "unable to deliver message after multiple retries",
		"server did not respond", "it has not been collected after", "failed to deliver to domain",
		"maximum time", "too long in the queue", "remained undeliverable for",
		"could not be delivered within", "was not delivered within", "giving up", "could not deliver for",
		"failed … attempts", "did not accept our requests to connect",
	}},
	{ReasonFailedSTARTTLS, []string{
		"starttls is required", "tls required but not supported", "must issue a starttls",
		"requires tls", "tls is required", "encryption required", "requiretls",
		"starttls failed", "does not support tls", "support starttls", "tls handshake failed", "tls negotiation failed",
	}},
	{ReasonSecurityError, []string{
		"authentication required", "authentication failure", "authentication failed",
		"authentication credentials invalid", "unauthenticated senders not allowed",
		"not authorized to send mail", "verification failure", "insecure", "not subscribed to ses",
		"executable files are not allowed", "you don't authenticate", "authentification",
		"is a dead domain", "not authorized to perform ses:sendrawemail",
	}},
	{ReasonMailerError, []string{
		"command died with status", "command failed", "command output:", "mailer error",
		"procmail", "bin/maildrop", "pipe to |/", "x-unix;", " || exit ", "unknown mailer error",
		"local delivery failed", "delivery to command", "exit status",
	}},
	{ReasonSyntaxError, []string{
		"malformed address", "syntax error", "command unrecognized", "command not recognized",
		"bad sequence of commands", "unrecognized command",
	}},
	{ReasonSystemError, []string{
		"system error", "system config error", "server configuration error", "mail system configuration error",
		"local configuration error", "local error in processing", "internal error", "internal server error",
		"queue file write error", "interrupted system call", "temporary local problem",
		"service currently unavailable", "remote server is misconfigured", "could not load drd",
		"it would create a mail loop", "loop was found in the mail exchanger", "aliasing/forwarding loop",
		"can't create user output file", "timeout waiting for input", "encountered an error while being processed",
		"recipient deferred because there is no mdb", "unable to connect … daemon", "transaction failed ",
		"i/o error", "service unavailable",
	}},
	{ReasonContentError, []string{
		"improper use of 8-bit data", "invalid mime", "mime complexity", "header size exceeds",
		"improperly-formatted binary content", "unnecessary base64 encoding",
		"too many received: headers", "message header size, or recipient list",
		"media not supported",
	}},
	{ReasonVacation, []string{
		"i am away on vacation", "i am away until", "i am out of the office", "out of office",
		"i will be traveling for work",
	}},
}

// matchPhrase reports the first reason whose phrases occur in the normalised text t.
func matchPhrase(t string) (Reason, string) {
	if t == "" {
		return "", ""
	}
	for _, row := range phraseTable {
		for _, p := range row.phrases {
			if phraseIn(t, p) {
				return row.reason, p
			}
		}
	}
	return "", ""
}

func phraseIn(t, p string) bool {
	if !strings.Contains(p, "…") {
		return strings.Contains(t, p)
	}
	for _, piece := range strings.Split(p, "…") {
		piece = strings.TrimSpace(piece)
		if piece == "" {
			continue
		}
		i := strings.Index(t, piece)
		if i < 0 {
			return false
		}
		t = t[i+len(piece):]
	}
	return true
}

// directoryPhrases are user-unknown answers that come from a directory lookup of the recipient
// (Exchange, IMail, Lotus Notes, mail.local): they say the mailbox does not exist even when the
// report does not tell at which SMTP stage the answer came.
var directoryPhrases = []string{
	"recipient name is not recognized", "000c05a6", "invalid final delivery userid",
	"not listed in public name", "mail.local: unknown user", "resolver.adr.recipientnotfound",
	"requested action not taken: mailbox unavailable",
}
