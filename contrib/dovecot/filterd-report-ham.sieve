# A message was moved or copied out of Junk: report it to filterd as ham, unless it went to Trash
# (throwing spam away says nothing about it) or stayed in Junk.
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];

if environment :matches "imap.mailbox" "*" {
  set "mailbox" "${1}";
}

if string :is "${mailbox}" ["Trash", "Junk"] {
  stop;
}

if environment :matches "imap.user" "*" {
  set "username" "${1}";
}

pipe :copy "filterd-learn" ["ham", "--user", "${username}"];
