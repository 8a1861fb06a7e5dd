// Every page of the console, by the name its navigation link carries (data-page).

import { auditPage } from "./page-audit.js";
import { groupsPage } from "./page-groups.js";
import { keysPage } from "./page-keys.js";
import { matrixPage } from "./page-matrix.js";
import { peersPage } from "./page-peers.js";
import { policiesPage } from "./page-policies.js";
import { routesPage } from "./page-routes.js";
import { usersPage } from "./page-users.js";

export const pages = {
  peers: peersPage,
  groups: groupsPage,
  "setup-keys": keysPage,
  users: usersPage,
  policies: policiesPage,
  matrix: matrixPage,
  routes: routesPage,
  audit: auditPage,
};
