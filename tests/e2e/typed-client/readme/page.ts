// What a TypeScript block of README.md may use without defining it: what a signed-in page of
// a Next.js app has at hand. test_clients.py puts `import { authClient, session } from
// "./page";` above each block, in src/, beside the SDK that README's command generates.
import { createAuthClient } from "better-auth/react";
import { jwtClient } from "better-auth/client/plugins";

export const authClient = createAuthClient({ plugins: [jwtClient()] });
export declare const session: typeof authClient.$Infer.Session;

// A block checked against `any` would compile whatever it says: this line does not compile
// unless both carry Better Auth's real types.
type IsAny<T> = 0 extends 1 & T ? true : false;
export const typed: [IsAny<typeof authClient.token>, IsAny<typeof session>] = [false, false];
