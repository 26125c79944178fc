# A message was moved or copied into Junk: report it to filterd as spam, for the IMAP user who did it.
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];

if environment :matches "imap.user" "*" {
  set "username" "${1}";
}

# :copy -- the message stays where the user put it; filterd-learn only reads it.
pipe :copy "filterd-learn" ["spam", "--user", "${username}"];
