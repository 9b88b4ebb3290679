// A frontend's view of the API: everything here is typed by clients generated from the
// running server's /openapi.json (generated/, made by test_clients.py), and tsc --strict
// compiles it with no `any` and no cast. Then it runs against that server, so every status
// and body it meets must be the one the schema promised.
//
// Usage: node build/check.js http://127.0.0.1:8000
import type { components } from "./generated/schema";
import { client } from "./generated/sdk/client.gen";
import {
  completeTask,
  completeTasks,
  countTasks,
  createTask,
  deleteTask,
  deleteTasks,
  getMe,
  getTask,
  health,
  listTasks,
  moveTask,
  patchTask,
  signup,
  updateTask,
} from "./generated/sdk";
import type { TaskCreate } from "./generated/sdk";

// openapi-typescript's view of the answers; the SDK's results are assigned to them, so tsc
// also checks that the two generators read the same schema.
type Task = components["schemas"]["TaskPublic"];
type TaskCounts = components["schemas"]["TaskCounts"];

let checks = 0;

function check(condition: boolean, what: string): void {
  if (!condition) {
    throw new Error(`failed: ${what}`);
  }
  checks += 1;
  console.log(`ok: ${what}`);
}

function unexpected(what: string, response: Response, error: unknown): Error {
  return new Error(`${what}: unexpected ${response.status} ${JSON.stringify(error)}`);
}

async function main(baseUrl: string): Promise<void> {
  let token = "";
  client.setConfig({ baseUrl, auth: () => token });

  const up = await health();
  if (up.data === undefined) throw unexpected("health", up.response, up.error);
  check(up.data.status === "ok", "GET /health answers ok");

  const email = `typed-client-${Date.now()}@example.com`;
  const account = await signup({ body: { email, password: "correct horse battery" } });
  if (account.data === undefined) throw unexpected("signup", account.response, account.error);
  token = account.data.access_token;
  const userId = account.data.user.id;
  // The path's user_id is a string: a numeric id as here, or a Better Auth user id.
  const pathUserId = String(userId);
  check(account.response.status === 201 && account.data.user.email === email, "signup returns 201 and the user");

  const me = await getMe();
  if (me.data === undefined) throw unexpected("getMe", me.response, me.error);
  check(me.data.id === userId, "getMe returns the signed-up user");

  // A retry-safe create: the same Idempotency-Key and body answer the first 201 again.
  const report = {
    path: { user_id: pathUserId },
    headers: { "Idempotency-Key": `report-${Date.now()}` },
    body: { title: "Write the report", priority: "high" as const, tags: ["Work", "urgent"], due_date: "2030-01-15T09:00:00Z" },
  };
  const created = await createTask(report);
  if (created.data === undefined) throw unexpected("createTask", created.response, created.error);
  const task: Task = created.data;
  const retried = await createTask(report);
  if (retried.data === undefined) throw unexpected("createTask", retried.response, retried.error);
  check(retried.response.status === 201 && retried.data.id === task.id, "createTask retried with its Idempotency-Key makes no second task");
  const etag = created.response.headers.get("ETag") ?? "";
  check(etag === '"1"', "createTask's ETag is the new task's version");
  const cached = await getTask({ path: { user_id: pathUserId, task_id: task.id }, headers: { "if-none-match": etag } });
  check(cached.response.status === 304, "getTask with If-None-Match of the current ETag is 304");
  const stale = await patchTask({
    path: { user_id: pathUserId, task_id: task.id },
    headers: { "if-match": '"0"' },
    body: { title: "Lost update" },
  });
  if (stale.error === undefined) throw unexpected("patchTask", stale.response, stale.data);
  check(stale.response.status === 412 && stale.response.headers.get("ETag") === etag, "patchTask with a stale If-Match is 412 with the current ETag");
  check(created.response.status === 201, "createTask returns 201");
  check(
    created.response.headers.get("Location") === `/api/${userId}/tasks/${task.id}`,
    "createTask's Location header names the new task",
  );
  check(task.tags.join(",") === "urgent,work", "tags come back lower-cased and sorted");
  check(task.due_date !== null && Date.parse(task.due_date) === Date.parse("2030-01-15T09:00:00Z"), "the due date round-trips");

  const other = await createTask({ path: { user_id: pathUserId }, body: { title: "Buy milk" } });
  if (other.data === undefined) throw unexpected("createTask", other.response, other.error);

  const listed = await listTasks({
    path: { user_id: pathUserId },
    query: { tag: "work", status: "pending", due_before: "2031-01-01T00:00:00Z", sort: "due_date", limit: 10 },
  });
  if (listed.data === undefined) throw unexpected("listTasks", listed.response, listed.error);
  const listedTasks: Task[] = listed.data;
  check(listed.response.headers.get("X-Total-Count") === "1", "listTasks with filters: X-Total-Count is 1");
  check(listedTasks.length === 1 && listedTasks[0]?.id === task.id, "listTasks with filters returns the tagged task");

  const replaced = await updateTask({ path: { user_id: pathUserId, task_id: task.id }, body: { title: "Write the final report" } });
  if (replaced.data === undefined) throw unexpected("updateTask", replaced.response, replaced.error);
  check(replaced.data.title === "Write the final report" && replaced.data.priority === "high", "updateTask (PUT) changes only the title");

  const patched = await patchTask({ path: { user_id: pathUserId, task_id: task.id }, body: { description: null, priority: "low" } });
  if (patched.data === undefined) throw unexpected("patchTask", patched.response, patched.error);
  check(patched.data.priority === "low" && patched.data.description === null, "patchTask (PATCH) changes the priority");

  const completed = await completeTask({ path: { user_id: pathUserId, task_id: task.id }, body: { completed: true } });
  if (completed.data === undefined) throw unexpected("completeTask", completed.response, completed.error);
  check(completed.data.completed && completed.data.completed_at !== null, "completeTask marks it completed");

  const missing = await getTask({ path: { user_id: pathUserId, task_id: other.data.id + 1000 } });
  if (missing.error === undefined) throw unexpected("getTask", missing.response, missing.data);
  const missingDetail = missing.error.detail;
  check(
    missing.response.status === 404 && typeof missingDetail === "string" && missingDetail === "Task not found",
    "getTask of a missing task is 404 with a typed string detail",
  );

  const invalid = await createTask({ path: { user_id: pathUserId }, body: { title: "" } });
  if (invalid.error === undefined) throw unexpected("createTask", invalid.response, invalid.data);
  const invalidDetail = invalid.error.detail;
  check(
    invalid.response.status === 422 &&
      Array.isArray(invalidDetail) &&
      invalidDetail.some((error) => error.loc.join(".") === "body.title" && error.msg.length > 0),
    "createTask with an empty title is 422 naming body.title",
  );

  const deleted = await deleteTask({ path: { user_id: pathUserId, task_id: task.id } });
  if (deleted.error !== undefined) throw unexpected("deleteTask", deleted.response, deleted.error);
  check(deleted.response.status === 204, "deleteTask returns 204");

  const gone = await getTask({ path: { user_id: pathUserId, task_id: task.id } });
  check(gone.response.status === 404 && gone.error !== undefined, "the deleted task is 404");

  // The list as a whole, as a TodoMVC page uses it: mark all, reopen some, count, clear the
  // completed ones, and drag a task to a new place. "Buy milk" is still there.
  const list = { user_id: pathUserId };
  const add = async (body: TaskCreate): Promise<{ task: Task; etag: string }> => {
    const made = await createTask({ path: list, body });
    if (made.data === undefined) throw unexpected("createTask", made.response, made.error);
    return { task: made.data, etag: made.response.headers.get("ETag") ?? "" };
  };
  const due = { rent: "2000-01-01T09:00:00Z", flights: "2030-06-01T09:00:00Z" };
  const rent = await add({ title: "Pay the rent", tags: ["home"], due_date: due.rent });
  await add({ title: "Book flights", due_date: due.flights });
  const plants = await add({ title: "Water the plants", tags: ["home"] });
  const plumber = await add({ title: "Call the plumber", tags: ["home"] });

  const all = await completeTasks({ path: list, body: { completed: true } });
  if (all.data === undefined) throw unexpected("completeTasks", all.response, all.error);
  check(
    all.response.status === 200 && all.data.changed === 5,
    "completeTasks with no filter completes all 5",
  );

  const reopen = { path: list, query: { tag: "home" }, body: { completed: false } };
  const home = await completeTasks(reopen);
  if (home.data === undefined) throw unexpected("completeTasks", home.response, home.error);
  check(
    home.response.status === 200 && home.data.changed === 3,
    "completeTasks with tag=home reopens those 3",
  );

  const counted = await countTasks({ path: list, query: { tz: "Europe/Paris" } });
  if (counted.data === undefined) throw unexpected("countTasks", counted.response, counted.error);
  const counts: TaskCounts = counted.data;
  // Nothing is due today in any time zone (the dates are in 2000 and 2030), so the server's
  // clock cannot change these numbers.
  const expected: TaskCounts = { total: 5, pending: 3, completed: 2, overdue: 1, due_today: 0 };
  const names: (keyof TaskCounts)[] = ["total", "pending", "completed", "overdue", "due_today"];
  check(
    counted.response.status === 200 && names.every((name) => counts[name] === expected[name]),
    "countTasks in Europe/Paris: 5 in all, 3 pending, 2 completed, 1 overdue, 0 due today",
  );

  const badZone = await countTasks({ path: list, query: { tz: "Mars/Olympus" } });
  if (badZone.error === undefined) throw unexpected("countTasks", badZone.response, badZone.data);
  const badZoneDetail = badZone.error.detail;
  check(
    badZone.response.status === 422 &&
      Array.isArray(badZoneDetail) &&
      badZoneDetail.some((error) => error.loc.join(".") === "query.tz"),
    "countTasks with an unknown time zone is 422 naming query.tz",
  );

  const noScope = await deleteTasks({ path: list });
  if (noScope.error === undefined) throw unexpected("deleteTasks", noScope.response, noScope.data);
  const noScopeDetail = noScope.error.detail;
  check(
    noScope.response.status === 422 &&
      Array.isArray(noScopeDetail) &&
      noScopeDetail.some(
        (error) => error.loc.join(".") === "query" && error.msg.includes("all=true"),
      ),
    "deleteTasks with neither a filter nor all=true is 422",
  );

  const cleared = await deleteTasks({ path: list, query: { status: "completed" } });
  if (cleared.data === undefined) throw unexpected("deleteTasks", cleared.response, cleared.error);
  check(
    cleared.response.status === 200 && cleared.data.deleted === 2,
    "deleteTasks with status=completed clears the 2 completed",
  );

  const order = async (): Promise<string> => {
    const listed = await listTasks({ path: list, query: { sort: "position" } });
    if (listed.data === undefined) throw unexpected("listTasks", listed.response, listed.error);
    const listedTasks: Task[] = listed.data;
    return listedTasks.map((each) => each.title).join(", ");
  };
  check(
    (await order()) === "Pay the rent, Water the plants, Call the plumber",
    "listTasks with sort=position lists the rest in the order they were made",
  );

  // Completing and reopening each made a new version, so the create's ETag is stale.
  const plumberPath = { ...list, task_id: plumber.task.id };
  const moveAbovePlants = { path: plumberPath, body: { before: plants.task.id } };
  const outdated = await moveTask({ ...moveAbovePlants, headers: { "if-match": plumber.etag } });
  if (outdated.error === undefined) throw unexpected("moveTask", outdated.response, outdated.data);
  check(
    outdated.response.status === 412 && outdated.response.headers.get("ETag") === '"3"',
    "moveTask with an ETag from before the bulk changes is 412 with the current ETag",
  );

  const current = await getTask({ path: plumberPath });
  if (current.data === undefined) throw unexpected("getTask", current.response, current.error);
  const currentEtag = current.response.headers.get("ETag") ?? "";
  const moved = await moveTask({ ...moveAbovePlants, headers: { "if-match": currentEtag } });
  if (moved.data === undefined) throw unexpected("moveTask", moved.response, moved.error);
  const movedTask: Task = moved.data;
  // Version 4: made, completed, reopened, moved.
  check(
    moved.response.status === 200 &&
      movedTask.id === plumber.task.id &&
      movedTask.title === "Call the plumber" &&
      moved.response.headers.get("ETag") === '"4"',
    "moveTask before another task, with the ETag just read, answers it with a new ETag",
  );
  check(
    (await order()) === "Pay the rent, Call the plumber, Water the plants",
    "listTasks with sort=position shows the new order",
  );

  console.log(`typed client: ${checks} checks passed`);
}

const baseUrl = process.argv[2];
if (baseUrl === undefined) {
  console.error("usage: node build/check.js BASE_URL");
  process.exit(2);
}
main(baseUrl).catch((error: unknown) => {
  console.error(error instanceof Error ? error.message : error);
  process.exit(1);
});
