// Matching a process against a scope given by people: executable globs and
// user lists. Shared by each host's policy (agent) and the access policy
// of users (controller), so one rule reads the same everywhere.

/** `*` and `?` within one path component, `**` across them; everything else literal. */
export function globToRegExp(glob: string): RegExp {
  let re = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === "*" && glob[i + 1] === "*") {
      re += ".*";
      i++;
    } else if (c === "*") re += "[^/]*";
    else if (c === "?") re += "[^/]";
    else re += c.replace(/[.+^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp(`^${re}$`);
}

/** Whether an executable path matches one of the globs. */
export function executableMatches(globs: readonly string[], exe: string): boolean {
  return globs.some((glob) => globToRegExp(glob).test(exe));
}

/** `uid 1001 (postgres)`, or `uid 1001` when the name is not known. */
export function describeUser(uid: number, name: string | undefined): string {
  return name === undefined || name === "" ? `uid ${uid}` : `uid ${uid} (${name})`;
}

/**
 * Why a process's users are outside a user list (names or uids), or
 * undefined when both its real and its effective user are in it (a setuid
 * program runs as someone else): `uid 0 (root), the process's effective user`.
 */
export function usersRefusal(users: readonly (string | number)[], uid: number, euid: number, userName: (uid: number) => string | undefined): string | undefined {
  for (const [id, which] of [[uid, "real"], [euid, "effective"]] as const) {
    const name = userName(id);
    if (!users.some((u) => (typeof u === "number" ? u === id : u === name))) return `${describeUser(id, name)}, the process's ${which} user`;
  }
  return undefined;
}
